"""Causal language models for the text task: GPT-2 family from a config, or pretrained.

Built models (``gpt2-tiny``, ``gpt2-small``, ``gpt2``) start from random weights and need
no download. ``local`` loads a Hugging Face model directory; ``modelscope`` first
downloads one with ModelScope (optional dependency, needs a network).

Dropout is set to 0.0 in every config we build and in loaded configs. Why: dropout
masks depend on how a batch is split and on RNG consumption order, so the serial,
data-parallel and PASO runs of the *same* step would see different masks and their
trajectories could not be compared (PASO's exactness test would fail for reasons that
have nothing to do with PASO). ``keep_dropout=True`` keeps a loaded model's dropout (it
is still seeded per step by the task).

Options (declared and validated in :class:`~paso_core.config.RunConfig`): ``n_positions``
(context of built models, default 1024), ``attn_implementation`` ('sdpa' default, or
'eager'), ``dtype`` (parameter dtype: 'float32' default, 'bfloat16', 'float16'; 'auto' =
the checkpoint's, pretrained only), ``keep_dropout``, ``modelscope_cache`` (download directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DEFAULT_CONTEXT, MODEL_DTYPES, PRETRAINED_MODELS, RunConfig
from .layouts import check_block_size, context_from
from .text_data import _file_lock, cache_root

GPT2_SIZES: dict[str, dict[str, int]] = {
    "gpt2-tiny": {"n_layer": 2, "n_embd": 128, "n_head": 4},
    "gpt2-small": {"n_layer": 4, "n_embd": 256, "n_head": 4},
    "gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12},  # the real 124M GPT-2 shape
}
DTYPES = {name: getattr(torch, name) for name in MODEL_DTYPES if name != "auto"}


# ---------------------------------------------------------------------------- options
def model_dtype(cfg: RunConfig) -> torch.dtype | str:
    """The torch dtype of ``cfg.dtype`` (validated by :func:`paso_core.config.validate`);
    'auto' keeps a checkpoint's own. The default is float32 because transformers >= 5 would
    otherwise load checkpoints in their saved (often bf16) dtype, which Adam handles poorly."""
    return "auto" if cfg.dtype == "auto" else DTYPES[cfg.dtype]


# ---------------------------------------------------------------------------- model directory
def resolve_model_dir(cfg: RunConfig) -> str | None:
    """The directory of a pretrained model ('local' or downloaded 'modelscope'); None for built ones."""
    if cfg.model == "local":
        if not cfg.model_dir or not Path(cfg.model_dir).is_dir():
            raise ValueError(f"model='local' needs model_dir=<directory>; got model_dir={cfg.model_dir!r}")
        return str(cfg.model_dir)
    if cfg.model == "modelscope":
        cache_dir = Path(cfg.modelscope_cache or cache_root() / "modelscope")
        return download_modelscope(cfg.modelscope_id, cache_dir)
    if cfg.model not in GPT2_SIZES:
        valid = ", ".join(list(GPT2_SIZES) + list(PRETRAINED_MODELS))
        raise ValueError(f"model={cfg.model!r} is not a text model; choose one of: {valid}")
    return None


def download_modelscope(model_id: str, cache_dir: Path) -> str:
    """``modelscope.snapshot_download`` under a lock (so P workers download once)."""
    hint = ("pass model='local', model_dir=<directory with config.json, weights and tokenizer> "
            "(download it on a machine with a network first)")
    try:
        from modelscope import snapshot_download
    except ImportError as err:
        raise RuntimeError(
            f"model='modelscope' needs the optional package modelscope "
            f"(pip install 'paso-artifact[hub]') and a network; or {hint}") from err
    lock_path = cache_dir / (model_id.replace("/", "__") + ".download")
    try:
        with _file_lock(lock_path):
            return str(snapshot_download(model_id, cache_dir=str(cache_dir)))
    except Exception as err:  # network, auth, missing model: all end the same way
        raise RuntimeError(
            f"could not download {model_id!r} from ModelScope ({type(err).__name__}: {err}); {hint}") from err


# ---------------------------------------------------------------------------- configs
def context_length(config: Any) -> int | None:
    """The longest sequence the model's position embeddings allow, if the config says."""
    return context_from(config)


def built_context(cfg: RunConfig) -> int:
    """Context of the GPT-2 models we build: ``cfg.n_positions`` (default 1024, GPT-2's)."""
    return cfg.n_positions


def zero_dropout(config: Any) -> list[str]:
    """Set every dropout probability of ``config`` to 0.0; return the names changed."""
    changed = []
    for name, value in config.to_dict().items():
        is_dropout = name.endswith("pdrop") or "dropout" in name
        if is_dropout and isinstance(value, float) and value > 0.0:
            setattr(config, name, 0.0)
            changed.append(name)
    return changed


def gpt2_config(size: str, vocab_size: int, n_positions: int = DEFAULT_CONTEXT,
                eos_id: int | None = None) -> Any:
    """A GPT-2 config of the named size, for our tokenizer's vocabulary, without dropout."""
    from transformers import GPT2Config

    if size not in GPT2_SIZES:
        raise ValueError(f"model={size!r} is not a GPT-2 size; choose one of: {', '.join(GPT2_SIZES)}")
    return GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, **GPT2_SIZES[size],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
        bos_token_id=eos_id, eos_token_id=eos_id,
    )


def lm_config(cfg: RunConfig, vocab_size: int, model_dir: str | None = None,
              eos_id: int | None = None) -> Any:
    """The model config (built or loaded), dropout zeroed, block size checked against it."""
    if model_dir is None:
        config = gpt2_config(str(cfg.model), vocab_size, built_context(cfg), eos_id)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir)
        if not cfg.keep_dropout:
            zero_dropout(config)
    check_block_size(cfg.block_size, context_length(config), str(cfg.model))
    return config


def count_parameters(config: Any) -> int:
    """Parameters of the model ``config`` describes, counted on the meta device (no memory, no I/O)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- models
def build_lm(cfg: RunConfig, vocab_size: int, model_dir: str | None = None,
             eos_id: int | None = None, config: Any = None) -> nn.Module:
    """A causal LM on CPU: random GPT-2 of ``cfg.model`` size, or the weights in ``model_dir``.

    Random initialisation draws from torch's global RNG; the caller seeds it so every
    rank builds the same model.
    """
    from transformers import AutoModelForCausalLM

    config = config if config is not None else lm_config(cfg, vocab_size, model_dir, eos_id)
    impl, dtype = cfg.attn_implementation, model_dtype(cfg)
    if model_dir is None:
        return AutoModelForCausalLM.from_config(config, attn_implementation=impl, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(model_dir, config=config, attn_implementation=impl, dtype=dtype)
