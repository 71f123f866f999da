"""Tasks as blocks: every task's model as an ordered list of blocks, for pipeline stages.

For each model (synthetic point; cnn, vit, resnet18 on digits; GPT-2 tiny; tiny Llama and
Qwen2 with sdpa and eager attention) the composition of ``model_blocks`` must be the model,
bit for bit, whole or cut into stages at any split points; ``loss_on`` of it must be
``task.loss``; micro-batches and data-parallel shards must reassemble the batch; and every
parameter must live in exactly one block (the model's own, never a copy).
"""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paso_core.config import RunConfig, validate
from paso_core.tasks.base import seeded_rng, shared_block_parameters
from paso_core.tasks.synthetic import SyntheticTask
from paso_core.tasks.text import TextTask
from paso_core.tasks.vision import VisionTask

CPU = torch.device("cpu")
STEP = 3
VISION_MODELS = ("cnn", "vit", "resnet18")
BLOCK_NAMES = {
    "cnn": ["stage0", "stage1", "stage2", "head"],
    "vit": ["embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "head"],
    "resnet18": ["stem", "layer1", "layer2", "layer3", "layer4", "head"],
    "gpt2": ["embed", "h.0", "h.1", "ln_f", "lm_head"],
    "llama": ["embed", "layers.0", "layers.1", "layers.2", "norm", "lm_head"],
    "qwen2": ["embed", "layers.0", "layers.1", "layers.2", "norm", "lm_head"],
}


# --------------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("paso_cache")  # tests/conftest.py: one tokenizer cache per session


def config(**options) -> RunConfig:
    return validate(RunConfig.from_dict(options))


@pytest.fixture(scope="module")
def vision_tasks() -> dict[str, VisionTask]:
    return {name: VisionTask(config(task="vision", dataset="digits", model=name, batch_size=12, augment=True), CPU)
            for name in VISION_MODELS}


def text_config(attn: str) -> RunConfig:
    return config(task="text", dataset="pydoc", model="gpt2-tiny", block_size=16, batch_size=6,
                  eval_batch_size=6, attn_implementation=attn)


@pytest.fixture(scope="module")
def text_tasks() -> dict[str, TextTask]:
    return {attn: TextTask(text_config(attn), CPU) for attn in ("sdpa", "eager")}


def tiny_decoder(kind: str, vocab_size: int, attn: str) -> nn.Module:
    """A 3-layer Llama or Qwen2 with random weights (Qwen2: layers 1.. use a 5-token sliding window)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    shape = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if kind == "llama":
        cfg = LlamaConfig(**shape)
    else:
        cfg = Qwen2Config(**shape, use_sliding_window=True, sliding_window=5, max_window_layers=1)
        assert "sliding_attention" in cfg.layer_types
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)


CASES = [*VISION_MODELS, "gpt2-sdpa", "gpt2-eager", "llama-sdpa", "llama-eager", "qwen2-sdpa", "qwen2-eager"]


@pytest.fixture(params=CASES)
def case(request, vision_tasks, text_tasks) -> tuple[str, object, nn.Module]:
    """(layout name, task, model) for one model; text models all run on the GPT-2 task's data."""
    name: str = request.param
    if name in vision_tasks:
        task = vision_tasks[name]
        return name, task, task.build_model()
    kind, attn = name.split("-")
    task = text_tasks[attn]
    model = task.build_model() if kind == "gpt2" else tiny_decoder(kind, task.vocab_size, attn)
    assert model.config._attn_implementation == attn
    return kind, task, model


def whole(task, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The whole-model forward exactly as ``task.loss`` runs it."""
    if isinstance(task, TextTask):
        return model(input_ids=x, use_cache=False).logits
    return model(x)


def reference_loss(task, model: nn.Module, batch) -> torch.Tensor:
    """Today's loss, written out independently of ``loss_on`` (existing runs must keep their numbers)."""
    x, y = batch
    with seeded_rng(task.cfg.seed, STEP, task.device):
        out = whole(task, model, x)
    if isinstance(task, TextTask):
        return F.cross_entropy(out.float().reshape(-1, out.shape[-1]), y.reshape(-1))
    return F.cross_entropy(out, y)


def staged(task, blocks: list[nn.Module], splits: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """Run the blocks as consecutive stages cut at ``splits``; stage k's output feeds stage k+1."""
    edges = [0, *splits, len(blocks)]
    for lo, hi in zip(edges, edges[1:]):
        x = task.forward_blocks(blocks[lo:hi], x)
    return x


def all_splits(n_blocks: int, max_stages: int = 3) -> list[tuple[int, ...]]:
    """Every way to cut n blocks into 1..max_stages non-empty stages."""
    return [cut for k in range(max_stages) for cut in itertools.combinations(range(1, n_blocks), k)]


# --------------------------------------------------------------------------- (a) composition
def test_blocks_compose_to_the_model_exactly_at_any_split(case) -> None:
    name, task, model = case
    named = task.model_blocks(model)
    assert [n for n, _ in named] == BLOCK_NAMES[name]
    blocks = [b for _, b in named]
    x = task.inputs(task.train_batch(STEP))
    splits = all_splits(len(blocks))
    assert len(splits) > len(blocks)  # the whole model, every 2-stage and every 3-stage cut
    for mode in ("train", "eval"):
        model.train(mode == "train")
        with torch.no_grad(), seeded_rng(task.cfg.seed, STEP, task.device):
            expected = whole(task, model, x)
        for cut in splits if mode == "train" else [()]:
            with torch.no_grad(), seeded_rng(task.cfg.seed, STEP, task.device):
                out = staged(task, blocks, cut, x)
            assert torch.equal(out, expected), f"{name} {mode} stages cut at {cut}"


def test_eager_blocks_are_causal(text_tasks) -> None:
    """Eager attention is causal only through an explicit mask: a changed future token must not
    change an earlier position's logits, in the blocks as in the model."""
    task = text_tasks["eager"]
    for model in (task.build_model(), tiny_decoder("llama", task.vocab_size, "eager")):
        model.eval()
        x = task.inputs(task.train_batch(0))
        y = x.clone()
        y[:, -1] = (y[:, -1] + 1) % task.vocab_size
        blocks = [b for _, b in task.model_blocks(model)]
        with torch.no_grad():
            a, b = task.forward_blocks(blocks, x), task.forward_blocks(blocks, y)
        assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])


# --------------------------------------------------------------------------- (b) loss
def test_loss_on_blocks_equals_task_loss_and_gradients(case) -> None:
    name, task, model = case
    batch = task.train_batch(STEP)
    model.zero_grad(set_to_none=True)
    loss = task.loss(model, batch, STEP)
    with torch.no_grad():
        assert torch.equal(loss, reference_loss(task, model, batch)), name
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad(set_to_none=True)
    blocks = [b for _, b in task.model_blocks(model)]
    with seeded_rng(task.cfg.seed, STEP, task.device):
        outputs = staged(task, blocks, (1, len(blocks) - 1), task.inputs(batch))
    staged_loss = task.loss_on(outputs, task.targets(batch))
    assert torch.equal(staged_loss, loss), name
    staged_loss.backward()
    for (pname, p), g in zip(model.named_parameters(), grads):
        assert torch.equal(p.grad, g), f"{name}: gradient of {pname}"


def test_synthetic_is_one_block_without_inputs() -> None:
    task = SyntheticTask(config(task="synthetic", function="rosenbrock", dim=20), CPU)
    model = task.build_model()
    batch = task.train_batch(STEP)
    (name, block), = task.model_blocks(model)
    assert name == "point" and block is model
    assert task.inputs(batch) is None and task.targets(batch) is None
    out = task.forward_blocks([block], task.inputs(batch))
    assert torch.equal(out, model())
    assert torch.equal(task.loss_on(out, task.targets(batch)), task.loss(model, batch, STEP))
    assert task.microbatches(batch, 4) == [None] * 4
    assert task.shard(batch, dp_rank=1, dp_size=2) is None


# --------------------------------------------------------------------------- (c) micro-batches
@pytest.mark.parametrize("kind", ["vision", "text"])
def test_microbatches_round_trip(kind: str, vision_tasks, text_tasks) -> None:
    task = vision_tasks["cnn"] if kind == "vision" else text_tasks["sdpa"]
    batch = task.train_batch(STEP)
    rows = batch[0].shape[0]
    for n in (1, 2, 3, rows):
        parts = task.microbatches(batch, n)
        assert len(parts) == n
        assert all(p[0].shape[0] == rows // n for p in parts)
        for j in range(len(batch)):
            assert torch.equal(torch.cat([p[j] for p in parts]), batch[j])
        # micro-batch i is rows [i*m, (i+1)*m): its targets still belong to its inputs
        m = rows // n
        assert torch.equal(task.targets(parts[-1]), task.targets(batch)[rows - m:])
    for bad in (5, rows + 1):
        message = rf"batch of {rows}/{rows} rows does not split into {bad} equal micro-batches"
        with pytest.raises(ValueError, match=message):
            task.microbatches(batch, bad)
    with pytest.raises(ValueError, match="0 micro-batches"):
        task.microbatches(batch, 0)


def test_microbatch_losses_average_to_the_batch_loss(text_tasks) -> None:
    task = text_tasks["sdpa"]
    model = task.build_model()
    batch = task.train_batch(STEP)
    blocks = [b for _, b in task.model_blocks(model)]
    parts = [task.loss_on(task.forward_blocks(blocks, task.inputs(mb)), task.targets(mb))
             for mb in task.microbatches(batch, 3)]
    assert (sum(parts) / 3).item() == pytest.approx(task.loss(model, batch, STEP).item(), rel=1e-5)


# --------------------------------------------------------------------------- (d) shards
@pytest.mark.parametrize("kind", ["vision", "text"])
def test_shard_by_data_parallel_coordinate(kind: str, vision_tasks, text_tasks) -> None:
    task = vision_tasks["vit"] if kind == "vision" else text_tasks["eager"]
    batch = task.train_batch(STEP)
    rows = batch[0].shape[0]
    for dp_size in (1, 2, 3, 6):
        shards = [task.shard(batch, dp_rank=r, dp_size=dp_size) for r in range(dp_size)]
        m = rows // dp_size
        for r, shard in enumerate(shards):
            for j in range(len(batch)):
                assert torch.equal(shard[j], batch[j][r * m:(r + 1) * m])
            assert torch.equal(task.shard(batch, r, dp_size)[0], shard[0])  # callers pass positionally
        # micro-batch k of dp shard r = the matching rows of the global batch
        if m % 2 == 0:
            _, second = task.microbatches(shards[-1], 2)
            assert torch.equal(second[1], batch[1][rows - m // 2:])
    with pytest.raises(ValueError, match=rf"batch of {rows}/{rows} rows does not split into 5 equal parts"):
        task.shard(batch, dp_rank=0, dp_size=5)
    with pytest.raises(ValueError, match="dp_rank=2 is outside 0..1"):
        task.shard(batch, dp_rank=2, dp_size=2)


# --------------------------------------------------------------------------- (e) ownership
def test_every_parameter_is_in_exactly_one_block(case) -> None:
    name, task, model = case
    named = task.model_blocks(model)
    model_params = {id(p): n for n, p in model.named_parameters()}
    holders: dict[int, list[str]] = {}
    for block_name, block in named:
        for p in block.parameters():
            assert id(p) in model_params, f"{name}: block {block_name} holds a parameter the model does not (a copy?)"
            holders.setdefault(id(p), []).append(block_name)
    missing = sorted(n for i, n in model_params.items() if i not in holders)
    assert not missing, f"{name}: parameters in no block: {missing}"
    shared = {model_params[i]: h for i, h in holders.items() if len(h) > 1}
    if name == "gpt2":  # the LM head is tied to the token embedding: one parameter, first and last block
        assert model.lm_head.weight is model.transformer.wte.weight
        assert shared == {"transformer.wte.weight": ["embed", "lm_head"]}
        assert shared_block_parameters(named) == {"embed:wte.weight": ["embed", "lm_head"]}
    else:
        assert shared == {} and shared_block_parameters(named) == {}


def test_unknown_layout_names_the_model_class(text_tasks, vision_tasks) -> None:
    task = text_tasks["sdpa"]
    with pytest.raises(TypeError, match="GPT2Model"):
        task.model_blocks(task.build_model().transformer)  # the base model has no LM head
    with pytest.raises(TypeError, match="Linear"):
        task.model_blocks(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="vision model Linear"):
        vision_tasks["cnn"].model_blocks(nn.Linear(2, 2))
