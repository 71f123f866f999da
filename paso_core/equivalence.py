"""The equivalence matrix: every engine against the serial reference, and the first-step canary.

Why: a parallel engine that silently computes something else (FSDP2 and pipelining on
CPU/gloo before torch 2.10, a wrong rank in a shard) still trains and still plots. Each
case here runs a method for a few steps and compares its final weights with plain serial
``torch.optim`` training computed in this process, written independently of
:mod:`paso_core.methods`. Cases of one world size share one torchrun launch.

The measure is the relative error of the *displacement* ``x_T - x_0`` (with ``lr = 1`` SGD
and one step, that is the first gradient itself): comparing weights would hide an engine
error behind the size of the initial weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
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


class CanaryFailed(RuntimeError):
    """An engine's first step differs from serial training's."""


@dataclass(frozen=True)
class Case:
    """One engine configuration and how close to serial it must end."""

    name: str
    options: Mapping[str, Any]
    rtol: float = EXACT
    note: str = ""

    def config(self, root: Path) -> RunConfig:
        data = {"progress": False, "threads_per_worker": 1, **self.options, "out_dir": str(root / self.name)}
        return validate(RunConfig.from_dict(data))


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def serial_reference(cfg: RunConfig, trajectory: list[torch.Tensor] | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Initial and final state dict of plain serial training with ``torch.optim`` on the
    task's own data, on as many threads as one worker uses; appends the parameters
    (concatenated) before every step and after the last to ``trajectory`` when given."""
    from .tasks import build_task

    serial = validate(RunConfig.from_dict({**_shared_options(cfg), "method": "serial", "nproc": 1, "nnodes": 1}))
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
            task.loss(model, task.train_batch(step), step).backward()
            if spec.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            set_lr(optimizer, lr_at(spec, step))
            optimizer.step()
        record()
        final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return initial, final


def _shared_options(cfg: RunConfig) -> dict[str, Any]:
    own = {f.name for f in dataclasses.fields(cfg.options)} if cfg.options is not None else set()
    return {k: v for k, v in cfg.to_dict().items() if k not in own and k not in ("out_dir", "run_name")}


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
    if case.rtol == EXACT:
        if summary.get("iterations") == summary.get("steps"):
            return errors["max_abs_diff"] == 0.0
        return errors["rel_weight_err"] <= SCAN_ROUNDING_RTOL
    return errors["rel_displacement_err"] <= case.rtol


def run_matrix(cases: Sequence[Case], root: str | Path) -> "Any":
    """Run every case (one torchrun launch per world size) and compare it with serial.

    Returns a pandas frame, one row per case: the errors, the bound, ``passed`` and the
    ``launch`` it ran in. Bad options fail here, before any launch.
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
    rows: list[dict[str, Any]] = []
    for launch_index, (world, indices) in enumerate(sorted(by_world.items())):
        results = launch_all([configs[i] for i in indices])
        for i, result in zip(indices, results):
            case, cfg = cases[i], configs[i]
            initial, reference = serial_reference(cfg)
            final = torch.load(result.path / "final.pt", weights_only=True)
            errors = compare(initial, reference, final)
            rows.append({"case": case.name, "method": cfg.method, "world_size": world, "launch": launch_index,
                         "steps": result.summary["steps"], "iterations": result.summary["iterations"],
                         **errors, "rtol": case.rtol, "passed": passes(case, errors, result.summary),
                         "note": case.note, "path": str(result.path)})
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
    if method == "paso":
        data.setdefault("threshold", 0.0)
        data.setdefault("ema_decay", 1.0)
    return Case(name=f"canary-{method}", options=data, rtol=rtol)


def canary(method: str, root: str | Path | None = None, rtol: float = CANARY_RTOL, **options: Any) -> "Any":
    """Run the first-step canary of ``method`` and raise :class:`CanaryFailed` if its
    weights differ from serial training's; returns the one-row frame otherwise."""
    import tempfile

    case = canary_case(method, rtol, **options)
    with contextlib.ExitStack() as stack:
        folder = Path(root) if root is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        table = run_matrix([case], folder)
    row = table.iloc[0]
    if not bool(row["passed"]):
        raise CanaryFailed(f"engine canary failed for method={method!r}: relative error of the first step "
                           f"{row['rel_displacement_err']:.3g} > {case.rtol:g} (max |diff| {row['max_abs_diff']:.3g}); "
                           "this torch/backend computes something other than serial training here")
    return table
