"""Declaring options: a default, choices and one line of help per field, and the value checks.

Why: the Python API, the CLI (``--help``) and the notebooks all read the same declaration,
so an option means the same thing everywhere; every check raises :class:`ConfigError`
naming the bad value and what is valid, before any worker starts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping


class ConfigError(ValueError):
    """Raised for an option value that cannot work; the message names the valid choices."""


def option(default: Any, help: str, choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field with its help line and (optional) valid choices."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def help_of(field: dataclasses.Field) -> str:
    return str(field.metadata.get("help", ""))


def choices_of(field: dataclasses.Field) -> tuple[Any, ...] | None:
    return field.metadata.get("choices")


def check_choices(obj: Any) -> None:
    """Every field declared with ``choices`` holds one of them."""
    for field in dataclasses.fields(obj):
        choices = choices_of(field)
        if choices is not None:
            check_choice(field.name, getattr(obj, field.name), choices)


@dataclasses.dataclass
class MethodOptions:
    """Base of a method's typed options: a small dataclass with defaults, help and checks."""

    #: Option values with which the method replays serial training step for step (e.g. PASO's
    #: zero tolerance); the engine canary runs with them unless the caller gives others.
    EXACT_REPLAY: ClassVar[Mapping[str, Any]] = {}

    def check(self, cfg: Any) -> None:
        """Raise :class:`ConfigError` for a bad value (``cfg``: the whole run, for cross checks)."""
        check_choices(self)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is not valid; it must be an integer >= {minimum}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not valid; it must be True or False")


def check_path_or_none(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name}={value!r} is not valid; give a path as a string (or None)")


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        rng = " and ".join(s for s in (lo, hi) if s) or "finite"
        raise ConfigError(f"{name}={value!r} is not valid; it must be a number {rng}")
