"""Apply sharded and tensor parallelism to a plain model on a named device mesh.

Why here and not in the method files: FSDP1, FSDP2, TP and FSDP2 x TP share the same few
decisions (which submodules are sharding units, which projections are split, how many
bytes a step moves), and each of these is a small function of the model that can be read
and tested without processes. The engines are PyTorch's own: ``FullyShardedDataParallel``,
``fully_shard`` (FSDP2, DTensor), ``parallelize_module`` with ``ColwiseParallel`` /
``RowwiseParallel``; this module only decides what to hand them (torchtitan's
"apply" functions in spirit: the model stays a plain ``nn.Module``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .options import ConfigError

# --------------------------------------------------------------------------- pre-launch checks
#: Text families whose attention/MLP projections have a correct column/row plan.
TP_TEXT_FAMILIES = ("llama", "qwen3next", "qwen3_next")  # built names and config.json model_type
#: Vision models with a correct plan (the CNN's MLP head); the others are refused.
TP_VISION_MODELS = ("cnn",)
TP_REFUSALS = {
    "gpt2": "GPT-2 projects q, k and v with one fused Conv1D (c_attn, weight in x out): a column split "
            "of it gives each rank a slice of [q | k | v] that mixes q, k and v across ranks, and "
            "ColwiseParallel/RowwiseParallel only shard nn.Linear/nn.Embedding",
    "vit": "the ViT's attention is nn.MultiheadAttention with a fused in_proj (q, k, v in one weight): "
           "a column split would mix q, k and v across ranks",
    "resnet18": "ResNet-18 is convolutions only: there are no Linear projections to split",
}
#: FSDP2 on CPU/gloo works from torch 2.9: before 2.7 it stops ("FSDP requires CUDA for
#: streams", measured on 2.5.1 and 2.6), on 2.7-2.8 gradients come out multiplied by the world
#: size (/work/shared/notes/strategies.md; "Incorrect AVG reduction for GLOO", pytorch issue 162338).
FSDP2_CPU_FIXED_IN = (2, 9)
FSDP2_CPU_STREAMS_UNTIL = (2, 7)


def torch_release(version: str) -> tuple[int, int]:
    """``'2.7.1+cpu'`` -> ``(2, 7)``."""
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def fsdp2_cpu_problem(torch_version: str, device_type: str) -> str | None:
    """Why FSDP2 cannot be trusted on this torch and device (None when it can)."""
    release = torch_release(torch_version)
    if device_type != "cpu" or release >= FSDP2_CPU_FIXED_IN:
        return None
    what = ("stops with 'FSDP requires CUDA for streams'" if release < FSDP2_CPU_STREAMS_UNTIL else
            "returns gradients multiplied by the world size, silently (pytorch issue 162338)")
    fixed = ".".join(map(str, FSDP2_CPU_FIXED_IN))
    return (f"FSDP2 (fully_shard) on CPU/gloo with torch {torch_version} {what}; use torch >= {fixed}, "
            "device='cuda', or method='ddp'/'fsdp'")


def check_fsdp2_torch(cfg: Any) -> None:
    """ConfigError before launch where FSDP2 is known to compute wrong gradients."""
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    problem = fsdp2_cpu_problem(torch.__version__, device)
    if problem is not None:
        raise ConfigError(f"method={cfg.method!r} refused: {problem}")


def check_heads_divide(n_head: int, n_kv_head: int, degree: int, model: str) -> None:
    """Each tensor-parallel rank computes whole heads: both head counts must divide the degree."""
    bad = [f"{what}={n}" for what, n in (("attention heads", n_head), ("KV heads", n_kv_head)) if n % degree]
    if bad:
        raise ConfigError(f"tp={degree} does not divide the {' and '.join(bad)} of model={model!r}; "
                          f"each rank must hold whole heads: choose tp among the common divisors "
                          f"{common_divisors(n_head, n_kv_head)}")


def common_divisors(a: int, b: int) -> list[int]:
    g = math.gcd(a, b)
    return [d for d in range(1, g + 1) if g % d == 0]


def check_tp_supported(cfg: Any, degree: int) -> None:
    """ConfigError before launch for a model without a correct tensor-parallel plan, or whose
    heads do not split into ``degree`` equal parts."""
    if cfg.task == "vision":
        if cfg.model not in TP_VISION_MODELS:
            raise ConfigError(f"method={cfg.method!r} has no tensor-parallel plan for model={cfg.model!r}: "
                              f"{TP_REFUSALS.get(cfg.model, 'unknown model')}; "
                              f"choose model among {', '.join(TP_VISION_MODELS)} or a data-parallel method")
        return
    if cfg.task != "text":
        raise ConfigError(f"method={cfg.method!r} splits layers of a model; task={cfg.task!r} has none: "
                          "choose task='text' or task='vision'")
    from .tasks.families import model_shape

    shape = model_shape(cfg)
    if shape is None:
        raise ConfigError(f"method={cfg.method!r} needs the model's head counts before launch, which "
                          f"model={cfg.model!r} does not give (download it and pass model='local', model_dir=...)")
    family = shape["family"]
    if family not in TP_TEXT_FAMILIES:
        why = TP_REFUSALS.get(family, "no tensor-parallel plan is written for it")
        raise ConfigError(f"method={cfg.method!r} has no tensor-parallel plan for model={cfg.model!r} "
                          f"(family {family!r}): {why}; choose a model of the families "
                          f"{', '.join(TP_TEXT_FAMILIES)}, or a data-parallel method (fsdp, fsdp2, ddp)")
    check_heads_divide(shape["n_head"], shape["n_kv_head"], degree, str(cfg.model))


# --------------------------------------------------------------------------- sharding units
def tied_parameter_ids(model: nn.Module) -> set[int]:
    """Parameters reachable under more than one name (GPT-2's wte = lm_head)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def shard_units(model: nn.Module, blocks: Sequence[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """The model's own submodules that stand for its blocks, as FSDP units: ``(name, module)``.

    Why not the blocks themselves: some blocks are thin wrappers (a GPT-2 layer that builds its
    mask, a CNN stage's ``Sequential``) whose forward the model never calls, so hooks on them
    would never fire. Each block is replaced by its outermost submodules that the model does
    contain. Units holding a tied parameter are left out: the tie is sharded once, in the root.
    """
    names = {id(m): n for n, m in model.named_modules() if n}
    tied = tied_parameter_ids(model)
    units: list[tuple[str, nn.Module]] = []
    chosen: set[int] = set()

    def visit(module: nn.Module) -> None:
        if id(module) in names:
            params = list(module.parameters())
            if params and not any(id(p) in tied for p in params) and id(module) not in chosen:
                chosen.add(id(module))
                units.append((names[id(module)], module))
            elif params and any(id(p) in tied for p in params):
                for child in module.children():
                    visit(child)
            return
        for child in module.children():
            visit(child)

    for _, block in blocks:
        visit(block)
    return units


def replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def wrap_checkpointing(model: nn.Module, units: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Activation checkpointing on each unit (``checkpoint_wrapper``, non-reentrant), in place.

    The wrapper's ``_checkpoint_wrapped_module.`` prefix is stripped from state dicts by torch,
    so checkpoints and ``final.pt`` keep the plain model's names."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    wrapped = []
    for name, unit in units:
        outer = checkpoint_wrapper(unit)
        replace_submodule(model, name, outer)
        wrapped.append((name, outer))
    return wrapped


# --------------------------------------------------------------------------- FSDP1 / FSDP2
def apply_fsdp1(model: nn.Module, units: Sequence[tuple[str, nn.Module]], device: torch.device,
                process_group: Any) -> nn.Module:
    """FSDP1 ``FullyShardedDataParallel``: one flat-parameter unit per block, FULL_SHARD,
    original parameters kept (``use_orig_params``: the optimizer sees the model's names)."""
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import CustomPolicy

    members = {id(m) for _, m in units}
    policy = CustomPolicy(lambda module: id(module) in members)
    device_id = device if device.type == "cuda" else torch.device("cpu")
    return FullyShardedDataParallel(model, process_group=process_group, auto_wrap_policy=policy,
                                    sharding_strategy=ShardingStrategy.FULL_SHARD, use_orig_params=True,
                                    device_id=device_id)


def fsdp2_api() -> tuple[Any, Any]:
    """``(fully_shard, MixedPrecisionPolicy)``: public in ``torch.distributed.fsdp`` from torch
    2.6; torch 2.4-2.5 (the Docker image's pin) ship the same API as
    ``torch.distributed._composable.fsdp``."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    return fully_shard, MixedPrecisionPolicy


def mixed_precision_policy(name: str) -> Any:
    """``none``: compute in the parameters' dtype; ``bf16``: bf16 compute, fp32 gradient reduction."""
    _, MixedPrecisionPolicy = fsdp2_api()

    if name == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_fsdp2(model: nn.Module, units: Sequence[tuple[str, nn.Module]], mesh: Any,
                mixed_precision: str = "none", activation_checkpointing: bool = False) -> dict[str, Any]:
    """``fully_shard`` each unit, then the root (which takes every parameter left over, tied
    weights included), on the given 1-D mesh; returns what was done, for the summary."""
    fully_shard, _ = fsdp2_api()

    units = list(units)
    if activation_checkpointing:
        units = wrap_checkpointing(model, units)
    policy = mixed_precision_policy(mixed_precision)
    for _, unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return {"fsdp_units": [n for n, _ in units], "fsdp_root": "the rest (embeddings, tied weights)",
            "mixed_precision": mixed_precision, "activation_checkpointing": activation_checkpointing}


# --------------------------------------------------------------------------- tensor parallel
ATTENTION_PROJECTIONS = {"q_proj": "colwise", "k_proj": "colwise", "v_proj": "colwise", "o_proj": "rowwise"}
MLP_PROJECTIONS = {"gate_proj": "colwise", "up_proj": "colwise", "down_proj": "rowwise"}
CNN_HEAD = {"head.1": "colwise", "head.3": "rowwise"}  # Flatten, Linear, ReLU, Linear


@dataclass
class TPPlan:
    """Which Linear modules are split (``name -> 'colwise' | 'rowwise'``) and what stays whole."""

    styles: dict[str, str] = field(default_factory=dict)
    replicated: list[str] = field(default_factory=list)
    #: replicated parameters applied to this rank's heads only (Qwen3-Next's q_norm/k_norm):
    #: each rank's gradient is a partial sum, so they are summed over the tp ranks after backward
    partial_grads: list[str] = field(default_factory=list)

    @property
    def rowwise(self) -> list[str]:
        return [n for n, s in self.styles.items() if s == "rowwise"]

    def describe(self) -> dict[str, Any]:
        """Every split module by its full name; replicated modules with layer indices folded to
        ``*`` (``model.layers.*.linear_attn.in_proj_qkvz``), so deep models stay readable."""
        return {"tp_colwise": [n for n, s in self.styles.items() if s == "colwise"],
                "tp_rowwise": self.rowwise, "tp_replicated": fold_layers(self.replicated),
                "tp_grads_summed_over_tp": self.partial_grads}


def fold_layers(names: Iterable[str]) -> list[str]:
    import re

    return list(dict.fromkeys(re.sub(r"\.\d+(?=\.)", ".*", n) for n in names))


def _linear_children(module: nn.Module, styles: dict[str, str]) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in styles)


def tp_plan(model: nn.Module) -> TPPlan:
    """The column/row plan of a model, found by structure (a pure function of the module tree).

    Attention = a module with Linear ``q_proj, k_proj, v_proj, o_proj`` (Llama, Qwen3-Next's
    full-attention layers): q/k/v split by output columns (whole heads per rank), o by input
    rows. MLP = Linear ``gate_proj, up_proj, down_proj`` (Llama's MLP, Qwen3-Next's dense and
    shared-expert MLPs). Everything else stays replicated: embeddings, norms, the LM head,
    gated-DeltaNet linear attention, the router and the routed experts (3-D parameters).
    """
    plan = TPPlan()
    if _is_small_cnn(model):
        plan.styles.update(CNN_HEAD)
        plan.replicated = ["features (convolutions)"]
        return plan
    for name, module in model.named_modules():
        for styles in (ATTENTION_PROJECTIONS, MLP_PROJECTIONS):
            if _linear_children(module, styles):
                plan.styles.update({f"{name}.{child}": style for child, style in styles.items()})
        if _linear_children(module, ATTENTION_PROJECTIONS):
            plan.partial_grads += [f"{name}.{n}" for n, _ in module.named_parameters()
                                   if n.split(".")[0] not in ATTENTION_PROJECTIONS]
    plan.replicated = [name for name, module in model.named_modules()
                       if name and name not in plan.styles and any(True for _ in module.parameters(recurse=False))]
    return plan


def _is_small_cnn(model: nn.Module) -> bool:
    from .tasks.vision_models import SmallCNN

    return isinstance(model, SmallCNN)


def apply_tp(model: nn.Module, mesh: Any) -> TPPlan:
    """``parallelize_module`` with the model's :func:`tp_plan` on a 1-D ``tp`` mesh.

    Outputs are local tensors (``use_local_output``), so each attention module sees its local
    q/k/v width; the Hugging Face forwards reshape with ``-1`` heads and keep the KV-group
    ratio, so they compute exactly the local heads. Attributes that name a head count are
    divided too, for forwards that use them."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = tp_plan(model)
    if not plan.styles:
        raise ValueError(f"no projections to split in {type(model).__name__}")
    degree = mesh.size()
    styles = {n: ColwiseParallel() if s == "colwise" else RowwiseParallel() for n, s in plan.styles.items()}
    parallelize_module(model, mesh, styles)
    for name in plan.styles:
        keep_outputs_intact(model, name)
    for name in {n.rpartition(".")[0] for n, s in plan.styles.items() if n.endswith("o_proj")}:
        attention = model.get_submodule(name)
        for attr in ("num_heads", "num_key_value_heads"):
            if isinstance(getattr(attention, attr, None), int):
                setattr(attention, attr, getattr(attention, attr) // degree)
    return plan


def keep_outputs_intact(model: nn.Module, name: str) -> None:
    """Turn off ``inplace`` on the activation right after a split Linear in a ``Sequential``
    (the CNN head's ReLU): the split output is a view made by a DTensor autograd function,
    which autograd forbids modifying in place. Same values, one extra tensor."""
    parent_name, _, index = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential) and index.isdigit() and int(index) + 1 < len(parent):
        follower = parent[int(index) + 1]
        if getattr(follower, "inplace", False):
            follower.inplace = False


# --------------------------------------------------------------------------- gradient clipping
@torch.no_grad()
def clip_grad_norm_mixed_(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """``clip_grad_norm_`` for parameters that mix plain tensors and DTensors on different
    meshes (TP, FSDP2 x TP), where torch's stacks of per-tensor norms cannot be formed.

    The same arithmetic as torch's: total = ||(||g_i||)_i||, coefficient max_norm/(total+1e-6)
    clamped to 1; each DTensor's norm is gathered to a full value first."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = []
    for g in grads:
        norm = torch.linalg.vector_norm(g, 2.0)
        full = getattr(norm, "full_tensor", None)
        norms.append((full() if callable(full) else norm).float())
    if not norms:
        return 0.0
    total = float(torch.linalg.vector_norm(torch.stack(norms), 2.0))
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total


# --------------------------------------------------------------------------- bytes (modelled)
def fsdp_step_bytes(n_elements: int, world: int, gather_elt: int = 4, reduce_elt: int = 4) -> int:
    """Bytes one rank sends per FSDP step, by formula (MODELLED, not measured): an all-gather of
    the parameters in forward, another in backward, and a reduce-scatter of the gradients,
    each ring ``(n-1)/n`` of the full size; with fp32 that is ``3 (n-1)/n x parameter bytes``."""
    if world <= 1:
        return 0
    return int((world - 1) / world * n_elements * (2 * gather_elt + reduce_elt))


def tp_step_bytes(activation_elements: Sequence[int], world: int, elt: int = 4) -> int:
    """Bytes one rank sends per TP step, by formula (MODELLED, not measured): every row-parallel
    output (``b x s x h`` of each attention and MLP) is all-reduced in forward, and the gradient
    of the matching column-parallel input in backward; ring all-reduce ``2 (n-1)/n`` each."""
    if world <= 1:
        return 0
    return int(sum(2 * 2 * (world - 1) / world * n * elt for n in activation_elements))


class ActivationMeter:
    """Counts the elements each row-parallel module outputs in a step (forward hooks), for
    :func:`tp_step_bytes`; the shapes come from the run, the bytes from the formula."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.elements: list[int] = []
        self.elt = 4
        self.handles = [model.get_submodule(n).register_forward_hook(self._record) for n in names]

    def _record(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if torch.is_grad_enabled():
            local = output.to_local() if hasattr(output, "to_local") else output
            self.elements.append(local.numel())
            self.elt = local.element_size()

    def take(self) -> tuple[list[int], int]:
        out, self.elements = self.elements, []
        return out, self.elt


def local_numel(model: nn.Module) -> int:
    """Elements of this rank's view of the parameters before FSDP (TP-local for DTensors)."""
    total = 0
    for p in model.parameters():
        to_local = getattr(p, "to_local", None)
        total += (to_local() if callable(to_local) else p).numel()
    return total


def dtype_bytes(name: str) -> int:
    return 2 if name == "bf16" else 4
