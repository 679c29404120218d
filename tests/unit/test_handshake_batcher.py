"""HandshakeBatcher (node.handshake_batch_window): when a handshake step runs at once, when it
waits for a batch, and that one step's failure stays its own. A real event loop; the gates are
stand-ins that record when they ran (the real gate under batching: tests/e2e/
test_handshake_batching.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from tlsgate.gateway.handshakes import HandshakeBatcher


class Step:
    def __init__(self, name: str, log: list[tuple[str, bool]], fail: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail = fail
        self.closed: str | None = None
        self.ran_at: float | None = None

    def handshake_step(self, batched: bool) -> None:
        self.ran_at = asyncio.get_running_loop().time()
        self.log.append((self.name, batched))
        if self.fail:
            raise RuntimeError("boom")

    def internal_error(self, reason: str) -> None:
        self.closed = reason


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_window_zero_runs_every_step_at_once() -> None:
    async def main() -> None:
        log: list[tuple[str, bool]] = []
        b = HandshakeBatcher(asyncio.get_running_loop(), 0.0)
        for n in "abc":
            b.submit(Step(n, log))
            assert log[-1] == (n, False)  # ran inside submit()
        assert log == [("a", False), ("b", False), ("c", False)]
    run(main())


def test_a_lone_step_runs_at_once_and_the_next_ones_wait_for_the_batch() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, bool]] = []
        b = HandshakeBatcher(loop, 0.05)
        a, later = Step("a", log), Step("b", log)
        b.submit(a)
        assert log == [("a", False)]
        b.submit(later)
        b.submit(Step("c", log))
        assert log == [("a", False)]  # within the window: queued, not run
        await asyncio.sleep(0.2)
        assert log == [("a", False), ("b", True), ("c", True)]  # one batch, in arrival order
        # and not before the window had passed since "a" ran (less the timer's 1 ms grain)
        assert a.ran_at is not None and later.ran_at is not None
        assert later.ran_at - a.ran_at >= 0.048
        # after a quiet window, a step runs at once again
        b.submit(Step("d", log))
        assert log[-1] == ("d", False)
    run(main())


def test_a_client_whose_bytes_arrive_twice_is_in_the_batch_once() -> None:
    async def main() -> None:
        log: list[tuple[str, bool]] = []
        b = HandshakeBatcher(asyncio.get_running_loop(), 0.05)
        b.submit(Step("first", log))
        x, y = Step("x", log), Step("y", log)
        for s in (x, y, x, x, y):
            b.submit(s)
        await asyncio.sleep(0.2)
        assert log == [("first", False), ("x", True), ("y", True)]
    run(main())


def test_batches_keep_coming_one_window_apart_under_steady_arrivals() -> None:
    async def main() -> None:
        log: list[tuple[str, bool]] = []
        b = HandshakeBatcher(asyncio.get_running_loop(), 0.03)
        steps = [Step(str(i), log) for i in range(40)]
        for s in steps:  # a step every 5 ms for 200 ms
            b.submit(s)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        assert len(log) == 40
        ran_at = sorted(s.ran_at for s in steps if s.ran_at is not None)
        assert log[0] == ("0", False)
        immediate = [n for n, batched in log if not batched]
        assert len(immediate) <= 5  # busy: nearly everything went through batches
        # runs: steps less than 10 ms apart ran together; each run ~a window after the last
        runs = [ran_at[0]]
        for prev, t in itertools.pairwise(ran_at):
            if t - prev > 0.01:
                runs.append(t)
        gaps = [b2 - b1 for b1, b2 in itertools.pairwise(runs)]
        assert len(runs) < 15  # 40 steps in far fewer runs
        assert min(gaps) >= 0.02
    run(main())


def test_a_step_that_raises_closes_its_own_connection_and_the_batch_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        log: list[tuple[str, bool]] = []
        b = HandshakeBatcher(asyncio.get_running_loop(), 0.05)
        b.submit(Step("first", log))
        bad = Step("bad", log, fail=True)
        after = Step("after", log)
        b.submit(bad)
        b.submit(after)
        await asyncio.sleep(0.2)
        assert log == [("first", False), ("bad", True), ("after", True)]
        assert bad.closed == "internal error in the handshake: RuntimeError"
        assert after.closed is None
    with caplog.at_level(logging.ERROR, logger="tlsgate.gateway"):
        run(main())
    assert "handshake step failed unexpectedly" in caplog.text
