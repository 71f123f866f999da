"""CLI over the same options as ``paso_core.run``: ``python -m paso_core run --method paso ...``;
``python -m paso_core plot RUN ... --column train_loss`` overlays a metric of finished runs.

Flags are generated from the declarations (:class:`RunConfig` and every registered
method's options), so the CLI can never drift from the API; ``--help`` shows each
option's default, choices and help line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing

from .config import RunConfig, shared_fields
from .launch import RunError, RunInterrupted, launch
from .methods import get_method, method_names
from .options import ConfigError, choices_of, help_of
from .plot_runs import X_COLUMNS, PlotError, plot_runs


def _flag_type(hint: typing.Any) -> tuple[typing.Any, dict[str, typing.Any]]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    is_optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = args[0] if args and is_optional else hint
    if base is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(base) is tuple:
        return float, {"nargs": "+" if Ellipsis in typing.get_args(base) else len(typing.get_args(base))}
    if base in (int, float, str):
        return base, {}
    return None, {}


def _add_flag(group: argparse._ArgumentGroup, field: dataclasses.Field, hint: typing.Any, note: str = "") -> None:
    kind, extra = _flag_type(hint)
    if kind is None and not extra:
        return
    choices = choices_of(field)
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
    text = help_of(field) + note + f" (default: {default!r}"
    text += f"; choices: {', '.join(map(str, choices))})" if choices else ")"
    kwargs: dict[str, typing.Any] = {"default": argparse.SUPPRESS, "help": text.replace("%", "%%"), **extra}
    if kind is not None:
        kwargs["type"] = kind
    group.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, **kwargs)


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per declared option: the shared ones, then each method's own."""
    common = parser.add_argument_group("options of every run")
    hints = typing.get_type_hints(RunConfig)
    for field in shared_fields():
        _add_flag(common, field, hints[field.name])
    owners: dict[str, list[str]] = {}
    for name in method_names():
        for field in dataclasses.fields(get_method(name).options):
            owners.setdefault(field.name, []).append(name)
    seen: set[str] = set()
    for name in method_names():
        options = get_method(name).options
        fields = [f for f in dataclasses.fields(options) if f.name not in seen]
        if not fields:
            continue
        group = parser.add_argument_group(f"options of method {name}")
        opt_hints = typing.get_type_hints(options)
        for field in fields:
            shared_with = [m for m in owners[field.name] if m != name]
            note = f" [also {', '.join(shared_with)}]" if shared_with else ""
            _add_flag(group, field, opt_hints[field.name], note)
            seen.add(field.name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m paso_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    methods = "\n".join(f"  {name:<11} {get_method(name).summary}" for name in method_names())
    run = sub.add_parser("run", help="run one training job", description=f"methods:\n{methods}",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_option_flags(run)
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    canary = sub.add_parser(
        "canary", help="first-step canary: one SGD step (lr 1) of a method against serial torch.optim",
        description=f"methods:\n{methods}", formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_option_flags(canary)
    plot = sub.add_parser("plot", help="overlay one metrics column of several run directories in one PNG",
                          description="Overlay one metrics.csv column of several run directories; rows where "
                                      "the column is empty (e.g. training columns on evaluation rows) are skipped.")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run directories (each with metrics.csv)")
    plot.add_argument("--column", required=True, help="metrics column to draw, e.g. train_loss, eval_loss")
    plot.add_argument("--x", default="step", choices=tuple(X_COLUMNS),
                      help="x axis: step (steps_done), iteration, train_time_s, ... (default: step)")
    plot.add_argument("--out", default=None, help="PNG to write (default: <column>.png here)")
    plot.add_argument("--logy", action="store_true", help="logarithmic y axis")
    return parser


def _canary(args: dict[str, typing.Any]) -> int:
    from .equivalence import CanaryFailed, canary

    try:
        table = canary(args.pop("method", "serial"), **args)
    except CanaryFailed as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    print(table.drop(columns=["note", "path"]).to_string(index=False))
    return 0


def _plot(args: dict[str, typing.Any]) -> int:
    try:
        out, notes = plot_runs(args["runs"], args["column"], x=args["x"], out=args["out"], logy=args["logy"])
    except PlotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command == "plot":
        return _plot(args)
    as_json = args.pop("json", False)
    try:
        if command == "canary":
            return _canary(args)
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
