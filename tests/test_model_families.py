"""The three built model families (GPT-2, Llama, Qwen3-Next) as blocks and in real runs.

- :func:`families.model_shape` (torch-free, used before launch) states the numbers of the
  model transformers actually builds, for every size (configs only; the paper-scale ones are
  counted on the meta device, never allocated).
- For each tiny model the composition of ``decoder_blocks`` gives the whole model's logits,
  loss and parameter gradients bit for bit (tolerance 0: the same ops in the same order),
  with sdpa and eager attention; Qwen3-Next's router auxiliary loss is in neither path.
- ``serial``, ``ddp`` and ``naive_dp`` (2 processes) train llama-tiny and qwen3next-tiny end to end
  (``naive_dp`` gpt2-tiny too).
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import torch.nn.functional as F

from paso_core import load_run
from paso_core.config import TEXT_MODELS, RunConfig, validate
from paso_core.equivalence import Case, run_matrix
from paso_core.tasks import families
from paso_core.tasks import text_models as tm
from paso_core.tasks.base import seeded_rng
from paso_core.tasks.text import TextTask

CPU = torch.device("cpu")
STEP = 2
TINY = ("gpt2-tiny", "llama-tiny", "qwen3next-tiny")
pytestmark = pytest.mark.usefixtures("paso_cache")


def text_cfg(model: str, **options) -> RunConfig:
    return validate(RunConfig.from_dict({"task": "text", "dataset": "pydoc", "model": model, "block_size": 16,
                                         "batch_size": 4, "eval_batch_size": 8, "n_positions": 64, **options}))


# --------------------------------------------------------------------------- shapes without torch
@pytest.mark.parametrize("name", families.BUILT_MODELS)
def test_model_shape_states_the_built_config(name: str) -> None:
    shape = families.model_shape(text_cfg(name) if name in TINY else RunConfig(task="text", model=name))
    config = tm.built_config(name, vocab_size=300, n_positions=64)
    assert shape["n_layer"] == config.num_hidden_layers
    assert shape["n_head"] == config.num_attention_heads
    assert shape["hidden"] == config.hidden_size
    assert shape["n_kv_head"] == getattr(config, "num_key_value_heads", config.num_attention_heads)
    assert shape["layer_types"] == (getattr(config, "layer_types", None) or ["full_attention"] * shape["n_layer"])
    assert shape["tied_embeddings"] == config.tie_word_embeddings
    assert name in TEXT_MODELS and shape["family"] == families.family_of(name)
    if shape["family"] == "llama":
        assert shape["n_kv_head"] < shape["n_head"], "grouped-query attention"
    if shape["family"] == "qwen3next":
        assert set(shape["layer_types"]) == {"full_attention", "linear_attention"}
        assert shape["n_experts"] == config.num_experts and shape["n_experts"] >= 4


def test_paper_scale_shapes_counted_on_meta() -> None:
    qwen = families.built_shape("qwen3next-2b")
    assert qwen["layer_types"].count("full_attention") == 4 and qwen["layer_types"].count("linear_attention") == 24
    n_qwen = tm.count_parameters(tm.built_config("qwen3next-2b", vocab_size=4096))
    assert 1.5e9 < n_qwen < 2.5e9
    # Llama-3.2-1B: the parameter count follows from its shape (tied head: one V x h matrix)
    c = tm.built_config("llama-1b", vocab_size=4096)
    h, kv = c.hidden_size, c.num_key_value_heads * c.head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * c.intermediate_size + 2 * h
    assert tm.count_parameters(c) == c.vocab_size * h + c.num_hidden_layers * per_layer + h


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ValueError, match="llama-tiny, llama-small, llama-1b"):
        families.family_of("llama-7b")
    from paso_core.options import ConfigError

    with pytest.raises(ConfigError, match="qwen3next-tiny"):
        text_cfg("qwen-tiny")
    assert families.model_shape(RunConfig(task="text", model="modelscope")) is None


def test_qwen3next_tiny_has_both_layer_types_and_moe() -> None:
    from transformers import AutoModelForCausalLM
    from transformers.models.qwen3_next import modeling_qwen3_next as q

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tm.built_config("qwen3next-tiny", 300, 64))
    kinds = [layer.block_type for layer in model.model.layers]
    assert kinds == families.built_shape("qwen3next-tiny")["layer_types"]
    moe = [m for m in model.modules() if isinstance(m, q.Qwen3NextSparseMoeBlock)]
    assert len(moe) == len(kinds) and all(m.experts.num_experts >= 4 for m in moe)


# --------------------------------------------------------------------------- blocks = whole model
@pytest.fixture(scope="module", params=[(m, a) for m in TINY for a in ("sdpa", "eager")], ids=lambda p: "-".join(p))
def family_case(request) -> tuple[TextTask, torch.nn.Module]:
    model_name, attn = request.param
    task = TextTask(text_cfg(model_name, attn_implementation=attn), CPU)
    return task, task.build_model()


def test_blocks_give_the_models_logits_loss_and_gradients(family_case) -> None:
    """Tolerance 0: the blocks run the model's own modules with the masks and rotary
    embeddings its forward builds, so every op and its order are the same."""
    task, model = family_case
    batch = task.train_batch(STEP)
    model.zero_grad(set_to_none=True)
    with seeded_rng(task.cfg.seed, STEP, task.device):
        logits = model(input_ids=task.inputs(batch), use_cache=False).logits
    loss = task.loss_on(logits, task.targets(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())

    model.zero_grad(set_to_none=True)
    blocks = [b for _, b in task.model_blocks(model)]
    with seeded_rng(task.cfg.seed, STEP, task.device):
        staged_logits = task.forward_blocks(blocks[:2], task.inputs(batch))
        staged_logits = task.forward_blocks(blocks[2:], staged_logits)
    staged_loss = task.loss_on(staged_logits, task.targets(batch))
    assert torch.equal(staged_logits, logits)
    assert torch.equal(staged_loss, loss)
    assert torch.equal(staged_loss, task.loss(model, batch, STEP))
    staged_loss.backward()
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, grads[name]), name


def test_block_names_follow_the_layers(family_case) -> None:
    task, model = family_case
    names = [n for n, _ in task.model_blocks(model)]
    shape = families.model_shape(task.cfg)
    layer = "h" if shape["family"] == "gpt2" else "layers"
    assert names[1:-2] == [f"{layer}.{i}" for i in range(shape["n_layer"])]
    assert names[0] == "embed" and names[-1] == "lm_head"


def test_router_aux_loss_is_in_neither_path() -> None:
    """Our loss is task.loss_on (cross-entropy); the router's load-balancing loss exists but is
    only added by transformers when labels are passed, which no path here does."""
    task = TextTask(text_cfg("qwen3next-tiny"), CPU)
    model = task.build_model()
    assert model.config.output_router_logits is False
    x, y = task.train_batch(STEP)
    with_router = model(input_ids=x, use_cache=False, output_router_logits=True)
    assert with_router.aux_loss is not None and float(with_router.aux_loss.detach()) > 0
    plain = F.cross_entropy(with_router.logits.float().reshape(-1, with_router.logits.shape[-1]), y.reshape(-1))
    assert torch.equal(task.loss(model, (x, y), STEP), plain)


# --------------------------------------------------------------------------- real runs
RUN = dict(task="text", dataset="pydoc", block_size=16, batch_size=4, eval_batch_size=64, n_positions=32,
           steps=4, lr=1e-2, optimizer="adam", eval_test=False)
#: DDP averages two half-batch gradients instead of one full-batch gradient: float32 rounding,
#: which Adam's normalisation passes on at about this relative size after 4 steps.
DDP_RTOL = 1e-4


def test_serial_ddp_and_naive_dp_train_every_family(tmp_path) -> None:
    """naive DP (per-parameter all-reduce) on GPT-2 too; its Llama and Qwen3-Next rows share
    DDP's launch and serial references."""
    cases = [Case(f"{method}-{model}", {**RUN, "model": model, "method": method,
                                        **({} if method == "serial" else {"nproc": 2})},
                  rtol=0.0 if method == "serial" else DDP_RTOL)
             for method in ("serial", "ddp", "naive_dp") for model in ("llama-tiny", "qwen3next-tiny")]
    cases.append(Case("naive_dp-gpt2-tiny", {**RUN, "model": "gpt2-tiny", "method": "naive_dp", "nproc": 2},
                      rtol=DDP_RTOL))
    table = run_matrix(cases, tmp_path)
    print(table[["case", "world_size", "max_abs_diff", "rel_displacement_err"]].to_string())
    assert table["passed"].all(), table.to_string()
    for path in table["path"]:
        run = load_run(path)
        losses = run.metrics.loc[run.metrics["kind"] == "train", "train_loss"].to_numpy()
        assert len(losses) == RUN["steps"] and all(math.isfinite(v) for v in losses)
        assert losses[-1] < losses[0], f"{path}: {losses}"
        final = torch.load(os.path.join(path, "final.pt"), weights_only=True)
        assert any(k.endswith("lm_head.weight") for k in final)
