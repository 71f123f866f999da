"""The text models built from a config (GPT-2, Llama, Qwen3-Next), as plain numbers, without torch.

Why a module of its own: :func:`paso_core.config.validate` must check, before any worker
starts, that a tensor-parallel degree divides the attention heads or that pipeline stages
do not outnumber the decoder layers; validation must not import torch or transformers.
:func:`model_shape` answers those questions from these tables (or from a local model's
``config.json``); :mod:`.text_models` builds the transformers configs from the same tables,
so the numbers checked up front are the numbers of the model that is built.

Families and sizes (random init, dropout 0, vocabulary = the BPE trained on the train split,
context = ``cfg.n_positions``):

- GPT-2: ``gpt2-tiny`` (2 layers, 128 wide), ``gpt2-small`` (4 x 256), ``gpt2`` (the 124M shape).
- Llama: ``llama-tiny`` (2 x 64), ``llama-small`` (4 x 256), ``llama-1b`` (the Llama-3.2-1B
  shape: 16 x 2048, MLP 8192, 32 heads, 8 KV heads; about 0.98B parameters with the default
  4096-token vocabulary). Grouped-query attention in every size (KV heads < heads); RoPE base
  500000 and the LM head tied to the embedding, as in Llama 3.2 (its long-context "llama3" RoPE
  scaling is left out: it only matters beyond 8192 positions and transformers warns about it
  for shorter contexts).
- Qwen3-Next (hybrid): gated-DeltaNet linear-attention layers with a full (softmax) attention
  layer every ``full_attention_interval`` layers, and sparse MoE MLPs (routed experts + a gated
  shared expert) in every layer. ``qwen3next-tiny`` (4 x 64: layers 1 and 3 full attention,
  4 experts, top-2), ``qwen3next-small`` (8 x 256), ``qwen3next-2b`` (seed 003's ~2B hybrid:
  28 layers = 4 full-attention among 24 linear-attention, 16 experts, top-2).
"""

from __future__ import annotations

from typing import Any

GPT2_SIZES: dict[str, dict[str, int]] = {
    "gpt2-tiny": {"n_layer": 2, "n_embd": 128, "n_head": 4},
    "gpt2-small": {"n_layer": 4, "n_embd": 256, "n_head": 4},
    "gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12},  # the real 124M GPT-2 shape
}

#: ``transformers.LlamaConfig`` keywords per size (vocabulary and context come from the run).
LLAMA_SIZES: dict[str, dict[str, Any]] = {
    "llama-tiny": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                   "num_attention_heads": 4, "num_key_value_heads": 2},
    "llama-small": {"num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 688,
                    "num_attention_heads": 8, "num_key_value_heads": 4},
    "llama-1b": {"num_hidden_layers": 16, "hidden_size": 2048, "intermediate_size": 8192,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64},
}
LLAMA_COMMON: dict[str, Any] = {"rms_norm_eps": 1e-5, "tie_word_embeddings": True, "attention_dropout": 0.0,
                                "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}

#: ``transformers.Qwen3NextConfig`` keywords per size; ``full_attention_interval`` k makes
#: layers k-1, 2k-1, ... full attention and the others gated-DeltaNet linear attention.
QWEN3NEXT_SIZES: dict[str, dict[str, Any]] = {
    "qwen3next-tiny": {"num_hidden_layers": 4, "full_attention_interval": 2, "hidden_size": 64,
                       "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
                       "head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
                       "linear_key_head_dim": 16, "linear_value_head_dim": 16,
                       "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                       "shared_expert_intermediate_size": 32},
    "qwen3next-small": {"num_hidden_layers": 8, "full_attention_interval": 4, "hidden_size": 256,
                        "intermediate_size": 512, "num_attention_heads": 8, "num_key_value_heads": 2,
                        "head_dim": 32, "linear_num_key_heads": 4, "linear_num_value_heads": 8,
                        "linear_key_head_dim": 32, "linear_value_head_dim": 32,
                        "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 128,
                        "shared_expert_intermediate_size": 128},
    "qwen3next-2b": {"num_hidden_layers": 28, "full_attention_interval": 7, "hidden_size": 2048,
                     "intermediate_size": 5632, "num_attention_heads": 16, "num_key_value_heads": 2,
                     "head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
                     "linear_key_head_dim": 128, "linear_value_head_dim": 128,
                     "num_experts": 16, "num_experts_per_tok": 2, "moe_intermediate_size": 384,
                     "shared_expert_intermediate_size": 512},
}
QWEN3NEXT_COMMON: dict[str, Any] = {"attention_dropout": 0.0, "decoder_sparse_step": 1, "norm_topk_prob": True,
                                    "output_router_logits": False, "tie_word_embeddings": False}

FAMILIES: dict[str, dict[str, dict[str, Any]]] = {"gpt2": GPT2_SIZES, "llama": LLAMA_SIZES,
                                                  "qwen3next": QWEN3NEXT_SIZES}
#: Every text model built from a config, in the order they are listed to users.
BUILT_MODELS: tuple[str, ...] = tuple(name for sizes in FAMILIES.values() for name in sizes)


def family_of(model: str) -> str:
    """``'gpt2' | 'llama' | 'qwen3next'`` for a built model; ValueError listing them otherwise."""
    for family, sizes in FAMILIES.items():
        if model in sizes:
            return family
    raise ValueError(f"model={model!r} is not a model built from a config; choose one of: {', '.join(BUILT_MODELS)}")


def qwen3next_layer_types(n_layer: int, interval: int) -> list[str]:
    """Qwen3-Next's own rule: every ``interval``-th layer (1-based) is full attention."""
    return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n_layer)]


def built_shape(model: str) -> dict[str, Any]:
    """Architecture numbers of a built model: family, n_layer, n_head, n_kv_head, hidden,
    layer_types (one per decoder layer), plus the linear-attention heads and experts where present."""
    family = family_of(model)
    size = FAMILIES[family][model]
    if family == "gpt2":
        n = size["n_layer"]
        return {"family": family, "n_layer": n, "n_head": size["n_head"], "n_kv_head": size["n_head"],
                "hidden": size["n_embd"], "layer_types": ["full_attention"] * n, "tied_embeddings": True}
    n = size["num_hidden_layers"]
    shape = {"family": family, "n_layer": n, "n_head": size["num_attention_heads"],
             "n_kv_head": size["num_key_value_heads"], "hidden": size["hidden_size"]}
    if family == "llama":
        return {**shape, "layer_types": ["full_attention"] * n, "tied_embeddings": True}
    return {**shape, "layer_types": qwen3next_layer_types(n, size["full_attention_interval"]),
            "tied_embeddings": False,
            "linear_n_k_head": size["linear_num_key_heads"], "linear_n_v_head": size["linear_num_value_heads"],
            "n_experts": size["num_experts"], "experts_per_token": size["num_experts_per_tok"]}


def shape_from_config(values: dict[str, Any]) -> dict[str, Any] | None:
    """The same numbers from a Hugging Face ``config.json`` dict (None when it lacks them)."""
    n = values.get("num_hidden_layers", values.get("n_layer"))
    heads = values.get("num_attention_heads", values.get("n_head"))
    hidden = values.get("hidden_size", values.get("n_embd"))
    if not all(isinstance(v, int) for v in (n, heads, hidden)):
        return None
    kv = values.get("num_key_value_heads") or heads
    layer_types = values.get("layer_types") or ["full_attention"] * n
    return {"family": str(values.get("model_type", "unknown")), "n_layer": n, "n_head": heads, "n_kv_head": kv,
            "hidden": hidden, "layer_types": list(layer_types)[:n],
            "tied_embeddings": bool(values.get("tie_word_embeddings", values.get("model_type") == "gpt2"))}


def model_shape(cfg: Any) -> dict[str, Any] | None:
    """Architecture numbers of the model a run will build, known before launch and without torch.

    ``dict(family, n_layer, n_head, n_kv_head, hidden, layer_types, tied_embeddings, ...)``
    for a built model or a local one (read from ``model_dir/config.json``); None for
    ``model='modelscope'`` (not downloaded yet) or a local config without these numbers.
    ``cfg`` is a resolved :class:`~paso_core.config.RunConfig` of ``task='text'``.
    """
    if cfg.model in BUILT_MODELS:
        return built_shape(cfg.model)
    if cfg.model == "local" and cfg.model_dir:
        from .layouts import read_model_config

        return shape_from_config(read_model_config(cfg.model_dir))
    return None
