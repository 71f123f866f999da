"""CLI over the same options as ``paso_core.run``: ``python -m paso_core run --method paso ...``.

Flags are generated from :class:`RunConfig`, so the CLI can never drift from the API.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from .config import ConfigError, RunConfig
from .launch import RunError, RunInterrupted, launch


def _flag_type(hint: typing.Any) -> tuple[typing.Any, dict[str, typing.Any]]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) else hint
    if base is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(base) is tuple:
        return float, {"nargs": 2}
    if base in (int, float, str):
        return base, {}
    return None, {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m paso_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one training job")
    hints = typing.get_type_hints(RunConfig)
    for field in dataclasses.fields(RunConfig):
        kind, extra = _flag_type(hints[field.name])
        if kind is None and not extra:
            continue
        kwargs: dict[str, typing.Any] = {"default": argparse.SUPPRESS, **extra}
        if kind is not None:
            kwargs["type"] = kind
        run.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, **kwargs)
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    args.pop("command")
    as_json = args.pop("json", False)
    try:
        result = launch(RunConfig.from_dict(args))
    except RunInterrupted as err:  # launch() already printed the one line naming the run
        return err.exit_code
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(result.summary, indent=2, default=str))
    else:
        print(f"run directory: {result.path}")
        for key in ("status", "steps", "iterations", "grad_evals", "speedup", "final_train_loss", "wall_time_s"):
            if key in result.summary:
                print(f"  {key}: {result.summary[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
