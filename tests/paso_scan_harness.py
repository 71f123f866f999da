"""Worker side of ``test_paso_scan.py``: PASO's real distributed rollout on injected gradients.

Each spawned process holds ``P / world`` window positions of a gloo group. For every case it
builds a :class:`~paso_core.methods.paso.PasoWorker` on a linear task whose gradient at step
``t`` is a fixed vector ``G[t]`` (so the gradients are known exactly, whatever the guesses),
places the window (start step, start slot), sets the guesses and the start state, and runs
the worker's own ``gradients`` -> ``rollout_`` -> ``errors_with_next_guess`` -> ``slide``.
What each position ends with is saved for the test to compare with a sequential rollout.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from paso_core.config import RunConfig, validate
from paso_core.context import WorkerContext
from paso_core.distributed import Comm
from paso_core.methods import get_method
from paso_core.methods.paso import PasoWorker
from paso_core.parallel import ParallelDims
from paso_core.tasks.synthetic import Point

DIM = 50
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Case:
    optimizer: str
    dtype: str
    start: int            # window start step b
    start_slot: int       # slot holding position 0
    window: int           # active positions (< P at the end of training)
    accepted: int         # steps the slide accepts (1..window)
    grad_clip: float | None
    weight_decay: float | None = None
    seed: int = 0

    def config(self, P: int, world: int | None = None) -> RunConfig:
        """P positions on ``world`` ranks (default P); training ends at ``start + window`` when
        the window is cut short."""
        steps = self.start + self.window if self.window < P else self.start + P + 5
        return validate(RunConfig.from_dict(dict(method="paso", P=P, nproc=world or P, optimizer=self.optimizer, lr=0.05,
                                  lr_schedule="cosine", warmup_steps=3, steps=steps, grad_clip=self.grad_clip,
                                  weight_decay=self.weight_decay, progress=False)))


def case_inputs(case: Case, P: int) -> dict[str, Any]:
    """Gradients per step, one guess per position and the start state: a function of the case
    and P (not of the placement)."""
    gen = torch.Generator().manual_seed(1000 * case.seed + 17 * case.start + P)
    dtype = DTYPES[case.dtype]
    steps = case.config(P).steps

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    grads = draw(steps, DIM)
    guesses = draw(P, DIM)
    names = {"sgd": (), "momentum": ("buf",), "adam": ("m", "v"), "adamw": ("m", "v")}[case.optimizer]
    state = {name: (draw(DIM).abs() * 0.01 if name == "v" else draw(DIM) * 0.1) for name in names}
    if case.start == 0:
        state = {name: torch.zeros(DIM, dtype=dtype) for name in names}
    return {"grads": grads, "guesses": guesses, "state": state}


class LinearTask:
    """``loss_t(x) = G[t] . x``: the gradient of step t is exactly ``G[t]`` at any point."""

    name = "linear"

    def __init__(self, grads: torch.Tensor, x0: torch.Tensor) -> None:
        self.grads, self.x0, self.device = grads, x0, torch.device("cpu")

    def build_model(self) -> nn.Module:
        return Point(self.x0.clone())

    def train_batch(self, step: int) -> None:
        return None

    def loss(self, model: nn.Module, batch: None, step: int) -> torch.Tensor:
        return (self.grads[step] * model()).sum()


def run_case(ctx_base: dict[str, Any], case: Case) -> list[dict[str, Any]]:
    world, rank, P = ctx_base["world"], ctx_base["rank"], ctx_base["P"]
    cfg = case.config(P, world)
    inputs = case_inputs(case, P)
    ctx = WorkerContext(cfg=cfg, rank=rank, world=world, local_rank=rank, device=torch.device("cpu"),
                        comm=Comm(rank, world, torch.device("cpu")), run_dir=ctx_base["run_dir"],
                        log=ctx_base["log"], dims=get_method("paso").dims(cfg))
    worker = PasoWorker(ctx, LinearTask(inputs["grads"], inputs["guesses"][0]))
    worker.win.start, worker.win.start_slot = case.start, case.start_slot
    for position in worker.positions:
        worker.layout.unpack_(position.x, inputs["guesses"][worker.pos(position)])
        for name, value in inputs["state"].items():
            worker.layout.unpack_(position.state[name], value)
    worker.gradients(case.window)
    outputs = worker.rollout_(case.window)
    errors = worker.errors_with_next_guess(case.window, outputs)
    pack = worker.layout.pack
    results = [{"pos": worker.pos(p), "rollout": worker.rollout, "x": pack(x).clone(),
                "state": {k: pack(v).clone() for k, v in state.items()}, "err": err}
               for p, (x, state), err in zip(worker.positions, outputs, errors)]
    worker.slide(case.window, case.accepted, outputs)
    for result, position in zip(results, worker.positions):
        result.update({"x_after": pack(position.x).clone(), "start_slot_after": worker.win.start_slot,
                       "bytes_sent": ctx.comm.bytes_sent, "padded_numel": position.x.numel(),
                       "element_size": position.x.element_size(), "rank": rank, "per_rank": worker.per_rank})
    return results


def main(rank: int, world: int, port: int, cases: list[dict[str, Any]], out_dir: str, P: int | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    out = Path(out_dir)
    base = {"rank": rank, "world": world, "P": P or world, "run_dir": out,
            "log": logging.getLogger(f"harness.rank{rank}")}
    results = [run_case(base, Case(**case)) for case in cases]
    torch.save(results, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def as_dicts(cases: list[Case]) -> list[dict[str, Any]]:
    return [asdict(c) for c in cases]


class FunctionTask:
    """A synthetic test function in float64 (the engine-vs-oracle comparison needs decisions
    that rounding cannot flip)."""

    name = "function64"

    def __init__(self, function: str, x0: torch.Tensor) -> None:
        from paso_core.tasks.synthetic import FUNCTIONS

        self.function, self.x0, self.device = FUNCTIONS[function], x0, torch.device("cpu")

    def build_model(self) -> nn.Module:
        return Point(self.x0.clone())

    def train_batch(self, step: int) -> None:
        return None

    def loss(self, model: nn.Module, batch: None, step: int) -> torch.Tensor:
        return self.function(model())


def start_point(dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(dim, generator=gen, dtype=torch.float64) * 2 - 1


def train_main(rank: int, world: int, port: int, options: dict[str, Any], out_dir: str) -> None:
    """Run the engine's whole loop (``PasoWorker.iterate`` until the end) on a float64 function."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    opts = dict(options)
    function, dim, seed = opts.pop("function"), opts.pop("dim"), opts.pop("seed")
    cfg = validate(RunConfig.from_dict(dict(method="paso", P=world, nproc=world, progress=False, **opts)))
    ctx = WorkerContext(cfg=cfg, rank=rank, world=world, local_rank=rank, device=torch.device("cpu"),
                        comm=Comm(rank, world, torch.device("cpu")), run_dir=Path(out_dir),
                        log=logging.getLogger(f"harness.rank{rank}"), dims=ParallelDims(window=world))
    worker = PasoWorker(ctx, FunctionTask(function, start_point(dim, seed)))
    rows = []
    while worker.win.start < cfg.steps:
        rows.append(worker.iterate())
    worker.gather_final_model()
    if rank == 0:
        torch.save({"accepted": [r["accepted"] for r in rows], "thresholds": [r["threshold"] for r in rows],
                    "x": worker.layout.pack(worker.x).clone(), "grad_evals": worker.win.grad_evals},
                   Path(out_dir) / "engine.pt")
    dist.barrier()
    dist.destroy_process_group()
