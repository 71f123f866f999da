"""Pipeline stages from a task's blocks, on ``torch.distributed.pipelining``.

Every rank builds the whole model with the run's seed (so every stage starts from the
serial model's weights), keeps the blocks of its own stage(s) (:class:`StageModule`),
wraps each in torch's ``PipelineStage`` and runs torch's schedule (GPipe, 1F1B,
interleaved 1F1B) with ``loss_fn=task.loss_on``. The schedule divides the summed
micro-batch gradients by the number of micro-batches (``scale_grads=True``), so with a
mean loss and equal micro-batches they are the full-batch gradients.

What torch leaves to the caller, done here:

- the split of the blocks into stages (:mod:`.split`), with block costs measured on a
  calibration micro-batch (:func:`measure_blocks`), agreed on by all ranks;
- tied parameters (GPT-2 and Llama tie the LM head to the embedding, in the first and the
  last stage): their gradients are summed over the stages holding them before the step, as
  Megatron does, so the copies receive identical updates (:meth:`Pipeline.sum_tied_grads_`);
- gradient clipping by the global norm over all stages, tied parameters counted once;
- a state dict under the full model's names (:func:`state_mirror`), so checkpoints and the
  merged ``final.pt`` are the serial model's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..options import ConfigError
from . import schedule_oracle as oracle
from .split import SPLIT_RULES, check_split_points, check_stage_count, choose_split, parse_split, stage_ranges

#: On CPU/gloo the engine is wrong or hangs before this torch (see the strategies notes' table).
MIN_CPU_TORCH = (2, 10)
TORCH_SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B", "interleaved_1f1b": "ScheduleInterleaved1F1B"}


# ----------------------------------------------------------------------------- checks before launch
def check_torch_version(on_cuda: bool, version: str | None = None) -> None:
    """Refuse CPU/gloo pipelining on a torch where it is known to be wrong or to hang."""
    from torch.torch_version import TorchVersion

    version = version or torch.__version__
    if not on_cuda and TorchVersion(version) < MIN_CPU_TORCH:
        raise ConfigError(
            f"pipeline parallelism on CPU/gloo needs torch >= {'.'.join(map(str, MIN_CPU_TORCH))}; this is torch "
            f"{version}, where torch.distributed.pipelining on gloo sums micro-batch gradients, aborts or hangs "
            "(1F1B/interleaved) -- see the strategies notes' torch-version table; run on CUDA or upgrade torch")


def count_blocks(cfg: Any) -> int | None:
    """How many blocks ``task.model_blocks`` will cut the run's model into, without building it
    (None when unknown before the worker runs, e.g. a model still to be downloaded).

    Text: embedding, each decoder layer, final norm, LM head (:func:`text_models.decoder_blocks`),
    the layer count read torch-free from :func:`families.model_shape`. Vision: the model is
    built on the meta device (no memory, no data). Synthetic: one block, the point."""
    if cfg.task == "synthetic":
        return 1
    if cfg.task == "text":
        from ..tasks.families import model_shape

        shape = model_shape(cfg)
        return None if shape is None else int(shape["n_layer"]) + 3
    from ..tasks.vision_models import build_vision_model, vision_blocks

    with torch.device("meta"):
        model = build_vision_model(str(cfg.model), 3, 32, 10)
    return len(vision_blocks(model))


def check_split_option(cfg: Any, split: Any, n_stages: int) -> None:
    """``split`` names a rule or valid split points, and the model has enough blocks for
    ``n_stages`` stages; raised in validation, before any worker starts."""
    rule = parse_split(split)
    n_blocks = count_blocks(cfg)
    if n_blocks is None:
        return  # the worker checks once the model exists
    if isinstance(rule, str):
        try:
            check_stage_count(n_blocks, n_stages)
        except ConfigError as err:
            raise ConfigError(f"model={cfg.model!r}: {err}") from None
    else:
        check_split_points(rule, n_blocks, n_stages)


# ----------------------------------------------------------------------------- stage modules
class StageModule(nn.Module):
    """A contiguous run of the task's blocks: what one ``PipelineStage`` runs.

    The blocks are the model's own modules (never copies), so the stage's parameters are
    the serial model's; ``forward_blocks`` is the task's own composition of blocks."""

    def __init__(self, blocks: Sequence[nn.Module], forward_blocks: Callable[[Sequence[nn.Module], Any], Any]
                 ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self._forward_blocks = forward_blocks

    def forward(self, x: Any) -> Any:
        return self._forward_blocks(list(self.blocks), x)


def state_mirror(model: nn.Module, blocks: Sequence[nn.Module]) -> nn.Module:
    """A module holding exactly the modules of ``blocks``, placed at their paths in ``model``.

    Why: a stage's state dict must use the full model's names (``transformer.h.1.attn...``)
    so the stages' dicts merge into the serial model's state dict and checkpoints load by
    name. The mirror shares the modules (no copies); parameters outside ``blocks`` are absent."""
    inside = {id(m) for block in blocks for m in block.modules()}
    root = nn.Module()
    attached: list[str] = []
    for path, module in model.named_modules():
        if not path or id(module) not in inside or any(path.startswith(a + ".") for a in attached):
            continue
        parent = root
        *parents, leaf = path.split(".")
        for name in parents:
            if not hasattr(parent, name):
                parent.add_module(name, nn.Module())
            parent = getattr(parent, name)
        parent.add_module(leaf, module)
        attached.append(path)
    return root


# ----------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class BlockProfile:
    """Per block: forward+backward seconds on one micro-batch, parameters, output bytes."""

    seconds: list[float]
    params: list[int]
    output_bytes: list[int]


def _timed_forward_backward(task: Any, block: nn.Module, x: Any, targets: Any, last: bool) -> tuple[float, Any]:
    tic = time.perf_counter()
    out = task.forward_blocks([block], x)
    if last:
        task.loss_on(out, targets).backward()
    elif out.requires_grad:
        out.backward(torch.ones_like(out))
    return time.perf_counter() - tic, out


def measure_blocks(task: Any, model: nn.Module, blocks: Sequence[nn.Module], microbatch: Any,
                   repeats: int = 3) -> BlockProfile:
    """Time each block's forward+backward alone on ``microbatch`` (best of ``repeats`` after
    one warm-up), and record its parameters and output size; gradients are cleared after.

    Each block gets the previous block's (detached) output, so shapes are the pipeline's."""
    x, targets = task.inputs(microbatch), task.targets(microbatch)
    seconds, output_bytes = [], []
    for index, block in enumerate(blocks):
        last = index == len(blocks) - 1
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            x = x.detach().requires_grad_(True)
        runs = [_timed_forward_backward(task, block, x, targets, last) for _ in range(repeats + 1)]
        seconds.append(min(t for t, _ in runs[1:]))
        out = runs[-1][1]
        output_bytes.append(out.numel() * out.element_size())
        x = out.detach()
    model.zero_grad(set_to_none=True)
    params = [sum(p.numel() for p in block.parameters()) for block in blocks]
    return BlockProfile(seconds, params, output_bytes)


# ----------------------------------------------------------------------------- the pipeline
@dataclass
class TiedParameter:
    """A parameter several stages hold (their copies must get the same gradient)."""

    name: str
    param: nn.Parameter
    stages: list[int]


@dataclass
class Pipeline:
    """This rank's part of a pipelined model: its stages, torch's schedule, and the
    bookkeeping torch leaves to the caller (tied gradients, global clipping, bytes)."""

    schedule_name: str
    microbatches: int
    n_ranks: int
    stages_per_rank: int
    points: tuple[int, ...]
    block_names: list[str]
    local_stages: list[int]
    stage_modules: list[StageModule]
    mirror: nn.Module
    schedule: Any
    tied: list[TiedParameter]
    profile: BlockProfile
    group: Any                                    # the "pp" Comm
    stage_seconds: float = 0.0                    # this rank's forward+backward per micro-batch
    bytes_per_step: int = 0                       # activations sent + gradients sent back, modelled
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_stages(self) -> int:
        return self.n_ranks * self.stages_per_rank

    @property
    def holds_first(self) -> bool:
        return 0 in self.local_stages

    @property
    def holds_last(self) -> bool:
        return self.n_stages - 1 in self.local_stages

    def parameters(self) -> list[nn.Parameter]:
        """This rank's trainable parameters (every parameter of its stages, once)."""
        return [p for p in self.mirror.parameters() if p.requires_grad]

    def step(self, task: Any, batch: Any) -> float | None:
        """One forward+backward of ``batch`` through the pipeline; gradients left in
        ``.grad``; the mean micro-batch loss on the rank of the last stage (None elsewhere)."""
        microbatches = task.microbatches(batch, self.microbatches)
        kwargs: dict[str, Any] = {}
        if self.holds_first:
            kwargs["arg_mbs"] = [(task.inputs(mb),) for mb in microbatches]
        losses: list[torch.Tensor] = []
        if self.holds_last:
            kwargs["target_mbs"] = [task.targets(mb) for mb in microbatches]
        self.schedule.step(losses=losses, return_outputs=False, **kwargs)
        self.group.add_modelled(self.bytes_per_step)
        if not self.holds_last:
            return None
        return float(torch.stack([loss.detach().float() for loss in losses]).mean())

    def sum_tied_grads_(self) -> None:
        """Sum each tied parameter's gradient over the stages holding it (all-reduce in the
        pipeline group; ranks without a copy add zeros), so every copy gets the same update."""
        for tied in self.tied:
            holders = {oracle.stage_rank(s, self.n_ranks) for s in tied.stages}
            if len(holders) < 2:
                continue  # one rank holds every copy: one parameter, one gradient already
            mine = self.group.group_rank in holders and tied.param.grad is not None
            buffer = tied.param.grad if mine else torch.zeros_like(tied.param)
            self.group.all_reduce_(buffer)
            if self.group.group_rank in holders:
                tied.param.grad = buffer

    def clip_grads_(self, max_norm: float | None) -> float | None:
        """Clip by the global L2 norm over all stages (tied parameters counted once, by the
        first stage holding them), as ``clip_grad_norm_`` on the serial model; returns the norm."""
        if max_norm is None:
            return None
        counted_elsewhere = {id(t.param) for t in self.tied
                             if oracle.stage_rank(min(t.stages), self.n_ranks) != self.group.group_rank}
        grads = [p.grad for p in self.parameters() if p.grad is not None and id(p) not in counted_elsewhere]
        local = torch.nn.utils.get_total_norm(grads, 2.0) if grads else torch.zeros(())
        total_sq = self.group.all_reduce_(local.detach().double().reshape(1) ** 2)
        total = total_sq.sqrt().reshape(())
        torch.nn.utils.clip_grads_with_norm_(self.parameters(), max_norm, total.to(local.dtype))
        return float(total)


def _tied_parameters(blocks: Sequence[tuple[str, nn.Module]], points: Sequence[int]) -> list[TiedParameter]:
    from ..tasks.base import shared_block_parameters

    stage_of = {name: k for k, r in enumerate(stage_ranges(points, len(blocks))) for name in
                (blocks[i][0] for i in r)}
    by_name = dict(blocks)
    out = []
    for key, holders in shared_block_parameters(blocks).items():
        block_name, param_name = key.split(":", 1)
        param = by_name[block_name].get_parameter(param_name)
        out.append(TiedParameter(key, param, sorted({stage_of[h] for h in holders})))
    return out


def agreed_profile(comm: Any, profile: BlockProfile) -> BlockProfile:
    """Every rank's block timings averaged, so all ranks choose the same ``time`` split."""
    gathered = comm.all_gather_floats(profile.seconds)
    return BlockProfile([float(v) for v in gathered.mean(0)], profile.params, profile.output_bytes)


def make_schedule(name: str, stages: list[Any], microbatches: int, loss_fn: Callable[..., torch.Tensor]) -> Any:
    """torch's schedule ``name`` over this rank's ``PipelineStage`` objects."""
    from torch.distributed import pipelining

    cls = getattr(pipelining, TORCH_SCHEDULES[name])
    if name == "interleaved_1f1b":
        return cls(stages, n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=True)
    return cls(stages[0], n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=True)


def build_pipeline(ctx: Any, task: Any, model: nn.Module, schedule_name: str, microbatches: int,
                   stages_per_rank: int, split: Any, calibration: Any = None) -> Pipeline:
    """This rank's stages of ``model`` (built whole, same seed on every rank) and torch's schedule.

    ``calibration``: a batch shaped like this rank's step batch (default: step 0's global
    batch), whose first micro-batch times the blocks; the timings are averaged over every
    rank of ``ctx.comm`` so all pipelines (also data-parallel replicas) choose one split."""
    from torch.distributed.pipelining import PipelineStage

    comm = ctx.group("pp")
    n_ranks = comm.world
    n_stages = n_ranks * stages_per_rank
    blocks = task.model_blocks(model)
    calibration = task.train_batch(0) if calibration is None else calibration
    first = task.microbatches(calibration, microbatches)[0]
    profile = agreed_profile(ctx.comm, measure_blocks(task, model, [b for _, b in blocks], first))
    rule = parse_split(split)
    costs = {"params": profile.params, "time": profile.seconds}.get(rule) if isinstance(rule, str) else None
    points = choose_split(rule, n_stages, len(blocks), costs)
    ranges = stage_ranges(points, len(blocks))
    local = oracle.rank_stages(comm.group_rank, n_ranks, stages_per_rank)
    modules = [StageModule([blocks[i][1] for i in ranges[s]], task.forward_blocks) for s in local]
    pp_stages = [PipelineStage(module, s, n_stages, ctx.device, group=comm.group) for s, module in zip(local, modules)]
    schedule = make_schedule(schedule_name, pp_stages, microbatches, task.loss_on)
    mirror = state_mirror(model, [blocks[i][1] for s in local for i in ranges[s]])
    pipe = Pipeline(schedule_name, microbatches, n_ranks, stages_per_rank, points, [n for n, _ in blocks], local,
                    modules, mirror, schedule, _tied_parameters(blocks, points), profile, comm)
    pipe.stage_seconds = sum(profile.seconds[i] for s in local for i in ranges[s])
    pipe.bytes_per_step = microbatches * sum(
        (profile.output_bytes[ranges[s][-1]] if s < n_stages - 1 else 0)         # activations forward
        + (profile.output_bytes[ranges[s][0] - 1] if s > 0 else 0)               # their gradients back
        for s in local)
    pipe.info = {
        "pp_schedule": schedule_name, "microbatches": microbatches, "stages": n_stages,
        "stages_per_rank": stages_per_rank, "split_rule": rule if isinstance(rule, str) else "points",
        "split_points": list(points), "block_names": [n for n, _ in blocks],
        "stage_blocks": [[blocks[i][0] for i in r] for r in ranges],
        "stage_params": [sum(profile.params[i] for i in r) for r in ranges],
        "block_seconds": profile.seconds, "block_params": profile.params,
        "tied_parameters": {t.name: t.stages for t in pipe.tied},
        "bubble_schedule": oracle.bubble_of(schedule_name, microbatches, n_ranks, stages_per_rank),
        "torch_schedule": TORCH_SCHEDULES[schedule_name],
    }
    return pipe


__all__ = ["SPLIT_RULES", "MIN_CPU_TORCH", "Pipeline", "StageModule", "BlockProfile", "build_pipeline",
           "check_split_option", "check_torch_version", "count_blocks", "make_schedule", "measure_blocks",
           "state_mirror"]
