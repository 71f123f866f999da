"""The equivalence matrix: every engine against the serial reference, and the first-step canary.

Why: a parallel engine that silently computes something else (FSDP2 and pipelining on
CPU/gloo before torch 2.10, a wrong rank in a shard) still trains and still plots. Each
case here runs a method for a few steps and compares its final weights with plain serial
``torch.optim`` training computed in this process, written independently of
:mod:`paso_core.methods`. Cases of one world size share one torchrun launch.

The measure is the relative error of the *displacement* ``x_T - x_0`` (with ``lr = 1`` SGD
and one step, that is the first gradient itself): comparing weights would hide an engine
error behind the size of the initial weights. The training loss of the last logged step
must match serial's too (relative error within ``max(rtol, LOSS_RTOL)``), so a forward that
is wrong where the update happens to be right is caught as well.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from .config import RunConfig, validate
from .methods import get_method
from .optim.updates import OptimSpec, lr_at, make_torch_optimizer, set_lr
from .options import ConfigError

#: A case with ``rtol=EXACT`` must match serial bit for bit (PASO with threshold 0), except
#: when it accepted scan iterates (``K < T``), which match to float32 rounding only.
EXACT = 0.0
SCAN_ROUNDING_RTOL = 1e-6

#: One SGD step with lr = 1: the displacement is the first (averaged, clipped) gradient.
CANARY_OPTIONS: dict[str, Any] = dict(optimizer="sgd", lr=1.0, steps=1, lr_schedule="constant", warmup_steps=0)
#: Rounding of a sum of per-shard gradients against the full-batch one, relative L2.
CANARY_RTOL = 1e-5
#: The last step's training loss against serial's, relative: the mean of per-shard (or
#: per-micro-batch) float32 losses rounds differently from the full batch's (measured ~1e-7).
#: A case with a looser ``rtol`` (bf16 compute) allows that on the loss too.
LOSS_RTOL = 1e-5


class CanaryFailed(RuntimeError):
    """An engine's first step differs from serial training's.

    The message always names the torch version (and the device/backend when known): an
    engine can be right on one torch and wrong on another (FSDP2 on gloo in 2.7-2.8).
    """

    def __init__(self, message: str, engine: str | None = None) -> None:
        engine = engine or f"torch {torch.__version__}"
        super().__init__(message if engine in message else f"{message} [{engine}]")


@dataclass(frozen=True)
class Case:
    """One engine configuration and how close to serial it must end."""

    name: str
    options: Mapping[str, Any]
    rtol: float = EXACT
    note: str = ""

    def config(self, root: Path) -> RunConfig:
        # every iteration's row: the last step's loss is found from the row before it
        data = {"progress": False, "threads_per_worker": 1, **self.options, "log_every": 1,
                "out_dir": str(root / self.name)}
        return validate(RunConfig.from_dict(data))


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def serial_reference(cfg: RunConfig, trajectory: list[torch.Tensor] | None = None,
                     losses: list[float] | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Initial and final state dict of plain serial training with ``torch.optim`` on the
    task's own data, on as many threads as one worker uses; appends the parameters
    (concatenated) before every step and after the last to ``trajectory``, and every step's
    loss before its update to ``losses``, when given."""
    from .tasks import build_task

    serial = validate(RunConfig.from_dict(_serial_options(cfg)))
    with _threads(serial.threads_per_worker or 1):
        task = build_task(serial, torch.device("cpu"))
        model = task.build_model()
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        spec = OptimSpec.from_config(serial)
        optimizer = make_torch_optimizer(spec, model.parameters())

        def record() -> None:
            if trajectory is not None:
                trajectory.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))

        for step in range(serial.steps):
            record()
            optimizer.zero_grad()
            loss = task.loss(model, task.train_batch(step), step)
            loss.backward()
            if losses is not None:
                losses.append(float(loss.detach()))
            if spec.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            set_lr(optimizer, lr_at(spec, step))
            optimizer.step()
        record()
        final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return initial, final


#: Run options that do not change training (where it is written, the worker's test hook).
_NOT_TRAINING = ("out_dir", "run_name", "inject_fault")


def _serial_options(cfg: RunConfig) -> dict[str, Any]:
    """The options of the serial run that ``cfg`` must reproduce: its own, less the method's."""
    own = {f.name for f in dataclasses.fields(cfg.options)} if cfg.options is not None else set()
    shared = {k: v for k, v in cfg.to_dict().items() if k not in own and k not in _NOT_TRAINING}
    return {**shared, "method": "serial", "nproc": 1, "nnodes": 1}


@dataclass(frozen=True)
class Reference:
    """Serial training's initial and final weights and every step's loss."""

    initial: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor]
    losses: list[float]


def _reference(cfg: RunConfig, cache: dict[str, Reference]) -> Reference:
    """Serial training for ``cfg``, computed once per distinct serial run (cases of several
    methods on one model and data share it)."""
    key = json.dumps(_serial_options(cfg), sort_keys=True, default=str)
    if key not in cache:
        losses: list[float] = []
        initial, final = serial_reference(cfg, losses=losses)
        cache[key] = Reference(initial, final, losses)
    return cache[key]


def compare(initial: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
            final: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Maximum absolute weight difference, and the relative L2 error of the displacement."""
    if set(reference) != set(final):
        raise ValueError(f"state dicts differ in keys: {sorted(set(reference) ^ set(final))}")
    max_abs = max(float((reference[k].double() - final[k].double()).abs().max()) for k in reference)
    num = sum(float((final[k].double() - reference[k].double()).square().sum()) for k in reference)
    den = sum(float((reference[k].double() - initial[k].double()).square().sum()) for k in reference)
    ref_norm = sum(float(reference[k].double().square().sum()) for k in reference)
    return {"max_abs_diff": max_abs, "rel_displacement_err": math.sqrt(num / den) if den else math.inf,
            "rel_weight_err": math.sqrt(num / ref_norm) if ref_norm else math.inf}


def passes(case: Case, errors: Mapping[str, float], summary: Mapping[str, Any]) -> bool:
    """Whether the final weights are as close to serial's as ``case`` requires."""
    if case.rtol == EXACT:
        if summary.get("iterations") == summary.get("steps"):
            return errors["max_abs_diff"] == 0.0
        return errors["rel_weight_err"] <= SCAN_ROUNDING_RTOL
    return errors["rel_displacement_err"] <= case.rtol


def last_logged_loss(metrics: "Any") -> tuple[int, float]:
    """The step whose loss the last training row holds, and that loss.

    A row's ``train_loss`` is the loss of its iteration's first step, whose index is the
    steps done after the row before (so every row is needed: :meth:`Case.config` logs each).
    """
    from .metrics import train_rows

    rows = train_rows(metrics)
    if rows.empty or int(rows["iteration"].iloc[-1]) != len(rows):
        raise ValueError(f"the equivalence matrix needs a training row per iteration (log_every=1); "
                         f"got {len(rows)} row(s)")
    step = int(rows["steps_done"].iloc[-2]) if len(rows) > 1 else 0
    return step, float(rows["train_loss"].iloc[-1])


def compare_loss(case: Case, reference: Reference, metrics: "Any") -> dict[str, float]:
    """The last logged training loss against serial's at the same step, and its bound."""
    step, loss = last_logged_loss(metrics)
    serial = reference.losses[step]
    error = abs(loss - serial) / abs(serial) if serial else abs(loss)
    return {"train_loss": loss, "serial_loss": serial, "loss_rel_err": error, "loss_rtol": max(case.rtol, LOSS_RTOL)}


def engine_of(summary: Mapping[str, Any]) -> str:
    """The torch version, device and backend a run used, e.g. ``torch 2.14.1 on cpu/gloo``."""
    from .distributed import backend_for

    device = str(summary.get("device", "cpu"))
    version = summary.get("torch_version", torch.__version__)
    return f"torch {version} on {device}/{backend_for(torch.device(device))}"


def result_row(case: Case, cfg: RunConfig, result: "Any", reference: Reference) -> dict[str, Any]:
    """One case's row: its run (``result``: a :class:`~paso_core.runs.RunResult`) against serial."""
    final = torch.load(result.path / "final.pt", weights_only=True)
    errors = compare(reference.initial, reference.final, final)
    loss = compare_loss(case, reference, result.metrics)
    passed = passes(case, errors, result.summary) and loss["loss_rel_err"] <= loss["loss_rtol"]
    return {"case": case.name, "method": cfg.method, "world_size": cfg.world_size,
            "steps": result.summary["steps"], "iterations": result.summary["iterations"],
            **errors, "rtol": case.rtol, **loss, "passed": passed, "engine": engine_of(result.summary),
            "note": case.note, "path": str(result.path)}


def run_matrix(cases: Sequence[Case], root: str | Path) -> "Any":
    """Run every case (one torchrun launch per world size) and compare it with serial.

    Returns a pandas frame, one row per case: the weight errors and their bound ``rtol``, the
    last step's loss beside serial's and its bound ``loss_rtol``, ``passed`` (both within
    bounds), the ``engine`` (torch, device, backend) and the ``launch`` it ran in. Bad
    options fail here, before any launch.
    """
    import pandas as pd

    from .launch import launch_all

    root = Path(root)
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ConfigError(f"case names must be unique: {names}")
    configs = [c.config(root) for c in cases]
    by_world: dict[int, list[int]] = {}
    for i, cfg in enumerate(configs):
        by_world.setdefault(cfg.world_size, []).append(i)
    references: dict[str, Reference] = {}
    rows: list[dict[str, Any]] = []
    for launch_index, (world, indices) in enumerate(sorted(by_world.items())):
        results = launch_all([configs[i] for i in indices])
        for i, result in zip(indices, results):
            row = result_row(cases[i], configs[i], result, _reference(configs[i], references))
            rows.append({**row, "launch": launch_index})
    return pd.DataFrame(rows).set_index("case").loc[names].reset_index()


def canary_case(method: str, rtol: float = CANARY_RTOL, **options: Any) -> Case:
    """The first-step case of ``method``: one SGD step with lr 1 (a window of P steps for
    the step-parallel methods, whose smallest run is one window) on the given task."""
    spec = get_method(method)
    data = {**CANARY_OPTIONS, **options, "method": method}
    opts = spec.options(**{f.name: data[f.name] for f in dataclasses.fields(spec.options) if f.name in data})
    window = getattr(opts, "P", 1)
    if "steps" not in options:
        data["steps"] = max(1, window)
    for name, value in spec.options.EXACT_REPLAY.items():
        data.setdefault(name, value)
    return Case(name=f"canary-{method}", options=data, rtol=rtol)


def canary(method: str, root: str | Path | None = None, rtol: float = CANARY_RTOL, **options: Any) -> "Any":
    """Run the first-step canary of ``method`` and raise :class:`CanaryFailed` if its
    weights or loss differ from serial training's; returns the one-row frame otherwise."""
    import tempfile

    case = canary_case(method, rtol, **options)
    with contextlib.ExitStack() as stack:
        folder = Path(root) if root is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        table = run_matrix([case], folder)
    check_canary(table)
    return table


def check_canary(table: "Any") -> None:
    """Raise :class:`CanaryFailed` naming every case of a canary table that differs from
    serial training, with the torch version, device and backend it ran on."""
    failed = table[~table["passed"].astype(bool)]
    if failed.empty:
        return
    lines = [f"engine canary failed for method={row.method!r} ({row.case}): relative error of the first step "
             f"{row.rel_displacement_err:.3g} (bound {row.rtol:g}, max |diff| {row.max_abs_diff:.3g}), loss "
             f"{row.train_loss:.6g} vs serial {row.serial_loss:.6g} (relative {row.loss_rel_err:.3g}, bound "
             f"{row.loss_rtol:g}); {row.engine} computes something other than serial training here"
             for row in failed.itertuples()]
    raise CanaryFailed("; ".join(lines), engine=str(failed["engine"].iloc[0]))
