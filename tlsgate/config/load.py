"""Read a TOML file into a validated :class:`Config`; every problem is reported with its key."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .schema import Config


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(Exception):
    """One or more problems in a config file, each naming the key."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  {self.source}: {p}" for p in self.problems]
        return "\n".join(lines)


def _loc_to_key(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "model-")) or part in ("str", "list[str]"):
            continue
        else:
            out += ("." if out else "") + part
    return out


def _problems(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and the table it is in)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        problems.append(Problem(_loc_to_key(tuple(err["loc"])), msg))
    return problems


def parse(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc)) from None


def load(path: str | Path) -> Config:
    """Load and validate a TOML config file. Relative paths inside stay relative to the CWD."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(str(p), [Problem("", f"cannot read the config file: {exc.strerror}")]) \
            from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), [Problem("", f"not valid TOML: {exc}")]) from None
    return parse(data, str(p))


def default_text() -> str:
    """The embedded demo configuration used by `tlsgate serve` without `-c`."""
    return resources.files("tlsgate").joinpath("default.toml").read_text()


def load_default() -> Config:
    return parse(tomllib.loads(default_text()), "<embedded default config>")
