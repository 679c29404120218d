"""HandshakeBatcher (node.handshake_batch_window): when a handshake step runs at once, when it
waits for a batch, and that one step's failure stays its own. A real event loop; the gates are
stand-ins that record when they ran (the real gate under batching: tests/e2e/
test_handshake_batching.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

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


K = HandshakeBatcher.BUSY_STEPS


def busy_window(log: list[tuple[str, bool]], n: int = K) -> HandshakeBatcher:
    """A batcher with a 50 ms window that has run ``n`` (default: BUSY_STEPS, the most a light
    window runs at once) steps; with n > BUSY_STEPS the rest are queued for its batch."""
    b = HandshakeBatcher(asyncio.get_running_loop(), 0.05)
    for i in range(n):
        b.submit(Step(f"l{i}", log))
    return b


def test_window_zero_runs_every_step_at_once() -> None:
    async def main() -> None:
        log: list[tuple[str, bool]] = []
        b = HandshakeBatcher(asyncio.get_running_loop(), 0.0)
        for n in "abc":
            b.submit(Step(n, log))
            assert log[-1] == (n, False)  # ran inside submit()
        assert log == [("a", False), ("b", False), ("c", False)]
    run(main())


def test_light_load_runs_at_once_and_a_busy_window_batches_the_rest() -> None:
    async def main() -> None:
        log: list[tuple[str, bool]] = []
        b = HandshakeBatcher(asyncio.get_running_loop(), 0.05)
        k = HandshakeBatcher.BUSY_STEPS
        light = [Step(f"l{i}", log) for i in range(k)]
        for s in light:
            b.submit(s)
        assert log == [(s.name, False) for s in light]  # each ran inside submit()
        late, later = Step("late", log), Step("later", log)
        b.submit(late)
        b.submit(later)
        assert len(log) == k  # the window is busy: queued, not run
        await asyncio.sleep(0.2)
        assert log[k:] == [("late", True), ("later", True)]  # one batch, in arrival order
        # at the window's end: not before the window had passed since its first step (less
        # the timer's grain)
        assert light[0].ran_at is not None and late.ran_at is not None
        assert late.ran_at - light[0].ran_at >= 0.045
        # a small batch (fewer than BUSY_STEPS): the load fell, steps run at once again
        b.submit(Step("again", log))
        assert log[-1] == ("again", False)
    run(main())


def test_steps_that_take_half_the_window_make_it_busy() -> None:
    """On a machine where a step costs much, fewer steps than BUSY_STEPS fill the window."""
    async def main() -> None:
        log: list[tuple[str, bool]] = []
        b = HandshakeBatcher(asyncio.get_running_loop(), 0.05)

        class Slow(Step):
            def handshake_step(self, batched: bool) -> None:
                super().handshake_step(batched)
                time.sleep(0.03)  # more than half the window, on the loop's own thread

        b.submit(Slow("slow", log))
        b.submit(Step("next", log))
        assert log == [("slow", False)]
        await asyncio.sleep(0.2)
        assert log == [("slow", False), ("next", True)]
    run(main())


def test_a_full_batch_keeps_the_next_window_batching_from_its_first_step() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, bool]] = []
        b = HandshakeBatcher(loop, 0.05)
        k = HandshakeBatcher.BUSY_STEPS
        nxt = Step("first-of-next", log)

        class Last(Step):  # its client's next flight arrives right after the batch
            def handshake_step(self, batched: bool) -> None:
                super().handshake_step(batched)
                loop.call_soon(b.submit, nxt)

        for i in range(2 * k - 1):  # k at once, k in the batch
            b.submit(Step(f"a{i}", log))
        b.submit(Last("last", log))
        await asyncio.sleep(0.02)
        assert len(log) == k
        await asyncio.sleep(0.05)
        assert [batched for _, batched in log] == [False] * k + [True] * k
        assert nxt.ran_at is None  # busy: even the new window's first step waits
        await asyncio.sleep(0.1)
        assert log[-1] == ("first-of-next", True)
        # that batch had one step: no longer busy
        b.submit(Step("light", log))
        assert log[-1] == ("light", False)
    run(main())


def test_a_window_without_steps_ends_the_busy_mode() -> None:
    async def main() -> None:
        log: list[tuple[str, bool]] = []
        b = busy_window(log, 3 * K)  # K at once, a full batch of 2K: busy
        await asyncio.sleep(0.2)  # the batch ran, then more than a window without a step
        assert len(log) == 3 * K
        b.submit(Step("after-a-lull", log))
        assert log[-1] == ("after-a-lull", False)
    run(main())


def test_a_client_whose_bytes_arrive_twice_is_in_the_batch_once() -> None:
    async def main() -> None:
        log: list[tuple[str, bool]] = []
        b = busy_window(log)
        x, y = Step("x", log), Step("y", log)
        for s in (x, y, x, x, y):
            b.submit(s)
        await asyncio.sleep(0.2)
        assert log[K:] == [("x", True), ("y", True)]
    run(main())


def test_batches_keep_coming_one_window_apart_under_steady_arrivals() -> None:
    async def main() -> None:
        log: list[tuple[str, bool]] = []
        b = HandshakeBatcher(asyncio.get_running_loop(), 0.03)
        steps = [Step(str(i), log) for i in range(40)]
        for s in steps:  # a step every 2 ms for 80 ms: ~15 per window, busy
            b.submit(s)
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.1)
        assert len(log) == 40
        ran_at = sorted(s.ran_at for s in steps if s.ran_at is not None)
        assert log[0] == ("0", False)
        immediate = [n for n, batched in log if not batched]
        # the first window's BUSY_STEPS at once, everything after through batches
        assert HandshakeBatcher.BUSY_STEPS <= len(immediate) <= HandshakeBatcher.BUSY_STEPS + 2
        # runs: steps less than 10 ms apart ran together; each run ~a window after the last
        runs = [ran_at[0]]
        for prev, t in itertools.pairwise(ran_at):
            if t - prev > 0.01:
                runs.append(t)
        gaps = [b2 - b1 for b1, b2 in itertools.pairwise(runs)]
        assert len(runs) < 10  # 40 steps in far fewer runs
        assert min(gaps) >= 0.02
    run(main())


def test_a_step_that_raises_closes_its_own_connection_and_the_batch_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        log: list[tuple[str, bool]] = []
        b = busy_window(log)
        bad = Step("bad", log, fail=True)
        after = Step("after", log)
        b.submit(bad)
        b.submit(after)
        await asyncio.sleep(0.2)
        assert log[K:] == [("bad", True), ("after", True)]
        assert bad.closed == "internal error in the handshake: RuntimeError"
        assert after.closed is None
    with caplog.at_level(logging.ERROR, logger="tlsgate.gateway"):
        run(main())
    assert "handshake step failed unexpectedly" in caplog.text
