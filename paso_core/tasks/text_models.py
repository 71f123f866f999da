"""Causal language models for the text task: GPT-2, Llama or Qwen3-Next from a config, or pretrained.

Built models (the sizes of :mod:`.families`: ``gpt2-tiny``, ``gpt2-small``, ``gpt2``,
``llama-tiny``, ``llama-small``, ``llama-1b``, ``qwen3next-tiny``, ``qwen3next-small``,
``qwen3next-2b``) start from random weights and need no download. ``local`` loads a Hugging Face model directory; ``modelscope`` first
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

:func:`decoder_blocks` cuts a decoder-only LM into pipeline blocks (embedding, each layer, final
norm, LM head) whose composition is the model's own forward, op for op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DEFAULT_CONTEXT, MODEL_DTYPES, PRETRAINED_MODELS, RunConfig
from .layouts import check_block_size, context_from
from .text_data import _file_lock, cache_root

from .families import (BUILT_MODELS, GPT2_SIZES, LLAMA_COMMON, LLAMA_SIZES, QWEN3NEXT_COMMON,
                       QWEN3NEXT_SIZES, family_of)

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
    if cfg.model not in BUILT_MODELS:
        valid = ", ".join(BUILT_MODELS + PRETRAINED_MODELS)
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
    """Context of the models we build: ``cfg.n_positions`` (default 1024, GPT-2's)."""
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


def llama_config(size: str, vocab_size: int, n_positions: int = DEFAULT_CONTEXT,
                 eos_id: int | None = None) -> Any:
    """A Llama config of the named size (grouped-query attention, tied LM head), without dropout."""
    from transformers import LlamaConfig

    if size not in LLAMA_SIZES:
        raise ValueError(f"model={size!r} is not a Llama size; choose one of: {', '.join(LLAMA_SIZES)}")
    return LlamaConfig(vocab_size=vocab_size, max_position_embeddings=n_positions,
                       **{**LLAMA_COMMON, **LLAMA_SIZES[size]}, bos_token_id=eos_id, eos_token_id=eos_id)


def qwen3next_config(size: str, vocab_size: int, n_positions: int = DEFAULT_CONTEXT,
                     eos_id: int | None = None) -> Any:
    """A Qwen3-Next hybrid config of the named size, without dropout and without the router's
    auxiliary loss in the outputs (``output_router_logits=False``: the task's loss is cross-entropy only)."""
    from transformers import Qwen3NextConfig

    if size not in QWEN3NEXT_SIZES:
        raise ValueError(f"model={size!r} is not a Qwen3-Next size; choose one of: {', '.join(QWEN3NEXT_SIZES)}")
    return Qwen3NextConfig(vocab_size=vocab_size, max_position_embeddings=n_positions,
                           **{**QWEN3NEXT_COMMON, **QWEN3NEXT_SIZES[size]}, bos_token_id=eos_id, eos_token_id=eos_id)


BUILDERS = {"gpt2": gpt2_config, "llama": llama_config, "qwen3next": qwen3next_config}


def built_config(model: str, vocab_size: int, n_positions: int = DEFAULT_CONTEXT, eos_id: int | None = None) -> Any:
    """The transformers config of a built model (any family of :mod:`.families`)."""
    return BUILDERS[family_of(model)](model, vocab_size, n_positions, eos_id)


def lm_config(cfg: RunConfig, vocab_size: int, model_dir: str | None = None,
              eos_id: int | None = None) -> Any:
    """The model config (built or loaded), dropout zeroed, block size checked against it."""
    if model_dir is None:
        config = built_config(str(cfg.model), vocab_size, built_context(cfg), eos_id)
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


# ---------------------------------------------------------------------------- blocks
#: The mask each layer type gets, from transformers' own functions (as the base models' forwards
#: do). Qwen3-Next's linear-attention layers get ``create_recurrent_attention_mask``: a padding
#: mask, None without padding (causality is in the recurrence itself).
MASK_FUNCTIONS = {"full_attention": "create_causal_mask", "sliding_attention": "create_sliding_window_causal_mask",
                  "linear_attention": "create_recurrent_attention_mask"}


def _positions(hidden: torch.Tensor) -> torch.Tensor:
    """0..T-1 as the models build them without a cache: shape (1, T)."""
    return torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)


def _causal_mask(config: Any, hidden: torch.Tensor, position_ids: torch.Tensor,
                 layer_type: str = "full_attention") -> Any:
    """The mask the model's own forward builds, from transformers' own mask function.

    Why not None: with attention_mask=None only SDPA is causal (``is_causal``); eager
    attention would attend to the future. ``create_causal_mask`` returns None for SDPA
    and an explicit additive mask for eager, exactly as the whole-model path does."""
    from transformers import masking_utils

    if layer_type not in MASK_FUNCTIONS:
        raise NotImplementedError(f"no block mask for layer type {layer_type!r}; known: {', '.join(MASK_FUNCTIONS)}")
    make = getattr(masking_utils, MASK_FUNCTIONS[layer_type])
    return make(config=config, inputs_embeds=hidden, attention_mask=None, cache=None, position_ids=position_ids)


class GPT2Embed(nn.Module):
    """Token + position embeddings and embedding dropout of a GPT-2 (``model.transformer``)."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.wte, self.wpe, self.drop = transformer.wte, transformer.wpe, transformer.drop

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        inputs_embeds = self.wte(input_ids)
        position_embeds = self.wpe(_positions(inputs_embeds))
        return self.drop(inputs_embeds + position_embeds.to(inputs_embeds.device))


class GPT2Layer(nn.Module):
    """One ``GPT2Block`` taking and returning hidden states only; it builds its own causal mask."""

    def __init__(self, block: nn.Module, config: Any) -> None:
        super().__init__()
        self.block = block
        self.config = config

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        position_ids = _positions(hidden)
        mask = _causal_mask(self.config, hidden, position_ids)
        return self.block(hidden, None, mask, None, encoder_attention_mask=None, use_cache=False,
                          position_ids=position_ids)


class DecoderLayer(nn.Module):
    """One decoder layer of a Llama-style model (Llama, Qwen2, Qwen3-Next, ...), hidden states in
    and out: rotary embeddings and the mask of the layer's type (causal, sliding-window, or
    Qwen3-Next's linear-attention padding mask) are rebuilt inside, as the base model's forward
    builds them, so nothing but the hidden states crosses a stage boundary. No cache is passed
    (training), so a gated-DeltaNet layer starts from a zero recurrent state, as in the whole
    model. ``rotary_emb`` holds buffers only."""

    def __init__(self, layer: nn.Module, rotary_emb: nn.Module, config: Any, layer_type: str) -> None:
        super().__init__()
        if layer_type not in MASK_FUNCTIONS:
            raise NotImplementedError(
                f"{type(layer).__name__} is a {layer_type!r} layer; blocks support {', '.join(MASK_FUNCTIONS)}")
        self.layer = layer
        self.rotary_emb = rotary_emb
        self.config = config
        self.layer_type = layer_type

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        position_ids = _positions(hidden)
        mask = _causal_mask(self.config, hidden, position_ids, self.layer_type)
        position_embeddings = self.rotary_emb(hidden, position_ids)
        return self.layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                          position_ids=position_ids, cache=None, use_cache=False)


def _has(module: Any, *names: str) -> bool:
    return module is not None and all(hasattr(module, n) for n in names)


def decoder_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Blocks of a Hugging Face causal LM: embed, each layer, final norm, LM head.

    Two layouts: GPT-2 (``transformer.wte/wpe/drop/h/ln_f`` + ``lm_head``) and Llama-style
    (``model.embed_tokens/layers/norm/rotary_emb`` + ``lm_head``: Llama, Qwen2, Qwen3-Next, whose
    ``config.layer_types`` says which mask each layer gets). Qwen3-Next's MoE router logits are
    not collected here, and the whole model only adds its auxiliary load-balancing loss when
    given ``labels`` (never, in :meth:`TextTask.loss`): both paths train on cross-entropy alone. A model whose base forward
    does more than this (e.g. Gemma's embedding scale) would not compose to the same output;
    the block tests compare the composition with the whole model."""
    transformer = getattr(model, "transformer", None)
    base = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if head is not None and _has(transformer, "wte", "wpe", "drop", "h", "ln_f"):
        layers = [(f"h.{i}", GPT2Layer(block, transformer.config)) for i, block in enumerate(transformer.h)]
        return [("embed", GPT2Embed(transformer)), *layers, ("ln_f", transformer.ln_f), ("lm_head", head)]
    if head is not None and _has(base, "embed_tokens", "layers", "norm", "rotary_emb"):
        config = base.config
        layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
        layers = [(f"layers.{i}", DecoderLayer(layer, base.rotary_emb, config, layer_types[i]))
                  for i, layer in enumerate(base.layers[:config.num_hidden_layers])]
        return [("embed", base.embed_tokens), *layers, ("norm", base.norm), ("lm_head", head)]
    raise TypeError(
        f"no block layout for {type(model).__name__}: expected a causal LM with lm_head and either "
        "transformer.wte/wpe/drop/h/ln_f (GPT-2) or model.embed_tokens/layers/norm/rotary_emb (Llama, Qwen2, ...)")
