"""LoRA adapters for the text models, through peft, for every method.

The option ``lora`` (on :class:`~paso_core.config.RunConfig`, task=text only) is a string
such as ``"r=8,alpha=16,targets=attention"`` or the same as a dict (papermill passes either);
:func:`parse_lora` turns it into a :class:`LoraSpec`. Keys: ``r`` (rank >= 1), ``alpha``
(> 0; the update is scaled by alpha / r), ``targets`` and ``dropout`` (default 0: dropout
masks would depend on how a batch is split, see :mod:`.text_models`).

``targets`` is a preset or explicit module-name suffixes joined by ``+`` (``q_proj+v_proj``):

- ``attention``: every projection of every token mixer (GPT-2's Conv1D ``attn.c_attn``/
  ``attn.c_proj``, Llama's and Qwen3-Next's ``self_attn.{q,k,v,o}_proj``, Qwen3-Next's
  gated-DeltaNet ``linear_attn.in_proj_qkvz/in_proj_ba/out_proj``);
- ``full_attention``: the same, but only in layers whose layer type is ``full_attention``
  (seed 003's choice; every layer of GPT-2 and Llama, the softmax layers of Qwen3-Next);
- ``mlp``: the Linear/Conv1D layers of the MLPs (Qwen3-Next: the shared expert and its gate;
  its routed experts are 3-D tensors, not Linear layers, and the router stays frozen);
- ``all-linear``: every Linear/Conv1D layer but the LM head.

:func:`apply_lora` injects the adapters with ``peft.inject_adapter_in_model``, so the model
stays the plain ``nn.Module`` it was (same attribute layout: ``decoder_blocks`` still cuts
it), and freezes every other parameter. It draws the adapters' initial values from torch's
global RNG: :meth:`TextTask.build_model` calls it under the same fixed seed as the model, so
every rank holds the same adapters (LoRA's B starts at 0: the initial model is the base model).

This module imports torch only inside the functions that need it, so validation can parse
a spec without it.
"""

from __future__ import annotations

import contextlib
import functools
import re
from dataclasses import dataclass
from typing import Any, Iterator

from ..options import ConfigError

PRESETS = ("attention", "full_attention", "mlp", "all-linear")
KEYS = ("r", "alpha", "targets", "dropout")
FORMAT = "'r=8,alpha=16,targets=attention' (or a dict with the keys r, alpha, targets, dropout)"
#: Module names of the token mixers, and of the MLPs, inside a decoder layer.
ATTENTION_PARTS = ("attn", "self_attn", "linear_attn")
MLP_PARTS = ("mlp",)
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:h|layers)\.(\d+)\.")
ADAPTER_MARK = "lora_"


@dataclass(frozen=True)
class LoraSpec:
    """A parsed ``lora`` option."""

    rank: int
    alpha: float
    targets: str
    dropout: float = 0.0

    def describe(self) -> str:
        return f"r={self.rank},alpha={self.alpha:g},targets={self.targets},dropout={self.dropout:g}"


def _number(key: str, text: Any, kind: type) -> Any:
    if isinstance(text, bool):
        raise ConfigError(f"lora {key}={text!r} is not valid; give a number")
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise ConfigError(f"lora {key}={text!r} is not valid; give {'an integer' if kind is int else 'a number'}") from None
    if kind is int and isinstance(text, float) and text != value:
        raise ConfigError(f"lora {key}={text!r} is not valid; give an integer")
    return value


def _fields(value: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    fields: dict[str, Any] = {}
    for item in (part.strip() for part in value.split(",")):
        if "=" not in item:
            raise ConfigError(f"lora={value!r} is not valid: {item!r} is not key=value; write {FORMAT}")
        key, text = (s.strip() for s in item.split("=", 1))
        if key in fields:
            raise ConfigError(f"lora={value!r} gives {key!r} twice")
        fields[key] = text
    return fields


def parse_lora(value: Any) -> LoraSpec | None:
    """The :class:`LoraSpec` of a ``lora`` option (None: no adapters); ConfigError naming the
    bad part and what is valid."""
    if value is None or isinstance(value, LoraSpec):
        return value
    if not isinstance(value, (str, dict)):
        raise ConfigError(f"lora={value!r} is not valid; give None or {FORMAT}")
    fields = _fields(value)
    unknown = sorted(set(fields) - set(KEYS))
    if unknown:
        raise ConfigError(f"lora={value!r} has unknown key(s) {unknown}; valid keys: {', '.join(KEYS)}")
    missing = [k for k in ("r", "alpha", "targets") if k not in fields]
    if missing:
        raise ConfigError(f"lora={value!r} lacks {', '.join(missing)}; write {FORMAT}")
    rank = _number("r", fields["r"], int)
    if rank < 1:
        raise ConfigError(f"lora r={rank} is not valid; the rank must be an integer >= 1")
    alpha = _number("alpha", fields["alpha"], float)
    if not alpha > 0 or alpha == float("inf"):
        raise ConfigError(f"lora alpha={alpha} is not valid; it must be a finite number > 0")
    dropout = _number("dropout", fields.get("dropout", 0.0), float)
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"lora dropout={dropout} is not valid; it must be a number in [0, 1)")
    targets = fields["targets"]
    if not isinstance(targets, str) or not targets.strip() or any(not t.strip() for t in targets.split("+")):
        raise ConfigError(f"lora targets={targets!r} is not valid; give one of {', '.join(PRESETS)} "
                          "or module-name suffixes joined by '+' (e.g. q_proj+v_proj)")
    return LoraSpec(rank=rank, alpha=alpha, targets=targets.strip(), dropout=dropout)


# --------------------------------------------------------------------------- which modules
def adaptable_modules(model: Any) -> dict[str, Any]:
    """``{full name: module}`` of every Linear and transformers Conv1D layer (what LoRA can adapt),
    naming an already adapted layer by its own name, not by peft's inner ``base_layer``/``lora_*``."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    from peft.tuners.lora import LoraLayer

    found = {}
    for name, m in model.named_modules():
        parts = name.split(".")
        if any(p == "base_layer" or p.startswith(ADAPTER_MARK) for p in parts):
            continue
        if isinstance(m, (nn.Linear, Conv1D, LoraLayer)):
            found[name] = m
    return found


def _layer_type(name: str, layer_types: list[str]) -> str | None:
    found = _LAYER_INDEX.search(name)
    return layer_types[int(found.group(1))] if found and int(found.group(1)) < len(layer_types) else None


def _inside(name: str, parts: tuple[str, ...]) -> bool:
    return any(f".{part}." in f".{name}" for part in parts)


def target_names(model: Any, targets: str) -> list[str]:
    """Full names of the modules ``targets`` selects in ``model``; ConfigError naming the
    suffixes that exist when a target matches nothing."""
    names = [n for n in adaptable_modules(model) if not n.endswith("lm_head")]
    config = getattr(model, "config", None)
    layer_types = list(getattr(config, "layer_types", None) or [])
    n_layer = getattr(config, "num_hidden_layers", getattr(config, "n_layer", 0)) or 0
    layer_types = layer_types or ["full_attention"] * n_layer
    if targets == "attention":
        chosen = [n for n in names if _inside(n, ATTENTION_PARTS)]
    elif targets == "full_attention":
        chosen = [n for n in names if _inside(n, ATTENTION_PARTS) and _layer_type(n, layer_types) == "full_attention"]
    elif targets == "mlp":
        chosen = [n for n in names if _inside(n, MLP_PARTS)]
    elif targets == "all-linear":
        chosen = names
    else:
        chosen = []
        for suffix in targets.split("+"):
            hits = [n for n in names if n == suffix or n.endswith("." + suffix)]
            if not hits:
                raise ConfigError(f"lora targets={targets!r}: {suffix!r} matches no Linear/Conv1D module of "
                                  f"{type(model).__name__}; its module names end in: "
                                  f"{', '.join(sorted({n.rsplit('.', 1)[-1] for n in names}))}; presets: "
                                  f"{', '.join(PRESETS)}")
            chosen += [n for n in hits if n not in chosen]
    if not chosen:
        raise ConfigError(f"lora targets={targets!r} matches no module of {type(model).__name__}; "
                          f"choose one of {', '.join(PRESETS)} or module-name suffixes joined by '+'")
    return chosen


# --------------------------------------------------------------------------- applying
def apply_lora(model: Any, spec: LoraSpec) -> Any:
    """Inject LoRA adapters into ``model`` in place (peft) and freeze everything else; returns it.

    The adapters' init draws from torch's global RNG: seed it the same on every rank."""
    from peft import LoraConfig, inject_adapter_in_model
    from transformers.pytorch_utils import Conv1D

    names = target_names(model, spec.targets)
    modules = adaptable_modules(model)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=names,
                        bias="none", fan_in_fan_out=any(isinstance(modules[n], Conv1D) for n in names))
    with _exact_targets():
        model = inject_adapter_in_model(config, model)
    adapted = adapted_modules(model)
    if sorted(adapted) != sorted(names):
        raise RuntimeError(f"peft adapted {sorted(set(adapted) ^ set(names))} differently from the requested "
                           f"targets={spec.targets!r}; refusing to train other modules than asked")
    for name, param in model.named_parameters():
        param.requires_grad_(ADAPTER_MARK in name)
    return model


@contextlib.contextmanager
def _exact_targets() -> Iterator[None]:
    """Adapt exactly the modules named, no others.

    Why: for MoE models whose layout changed in transformers 5 (Qwen3-Next maps to qwen2_moe)
    peft rewrites ``target_modules`` so adapters *saved under transformers 4* still load: every
    name ending in ``gate_proj``/``up_proj``/``down_proj`` -- here the shared expert's Linear
    layers -- is turned into the fused routed-expert parameters, silently adapting other weights.
    That rewrite is for loading old adapters; ours are new and named in full, so it is switched
    off while injecting (:func:`apply_lora` then checks that peft adapted exactly the names)."""
    from unittest import mock

    from peft.utils import transformers_weight_conversion as conversion

    with mock.patch.object(conversion, "convert_peft_config_for_transformers", lambda *args, **kwargs: None):
        yield


def adapted_modules(model: Any) -> list[str]:
    """Names of the modules that carry an adapter (peft's LoRA layers)."""
    from peft.tuners.lora import LoraLayer

    return [name for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def lora_summary(model: Any, spec: LoraSpec) -> dict[str, Any]:
    """What was adapted, for the run summary: the spec, the modules, trainable vs total parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"spec": spec.describe(), "modules": adapted_modules(model), "trainable_parameters": trainable,
            "total_parameters": total, "trainable_fraction": trainable / total if total else 0.0}


def check_lora_targets(cfg: Any, spec: LoraSpec) -> list[str]:
    """Before launch: the modules ``spec.targets`` selects in the run's model, built on the meta
    device (no memory); ConfigError when it selects none. A ``modelscope`` model (not on disk
    yet) is checked by the worker when the adapters are applied."""
    if cfg.model == "modelscope":
        return []
    return list(_meta_targets(str(cfg.model), cfg.model_dir if cfg.model == "local" else None, spec.targets))


@functools.lru_cache(maxsize=32)
def _meta_targets(model_name: str, model_dir: str | None, targets: str) -> tuple[str, ...]:
    """Cached: validation runs several times per launch (API, launcher, run matrix)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from . import text_models as tm

    if model_dir is None:
        config = tm.built_config(model_name, vocab_size=512, n_positions=64)  # names do not depend on sizes
    else:
        config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return tuple(target_names(model, targets))
