"""LoRA through peft on the text models, for every method.

Parsing and its errors (before launch); the trainable parameters are exactly the adapters and
the optimizer sees only them; ``full_attention`` adapts only Qwen3-Next's softmax layers; the
adapted model still cuts into blocks; the adapters are the same on every build (rank); a serial
run trains them and leaves the base weights bit for bit; naive DP, DDP, FSDP1, FSDP2, tensor,
pipeline and model parallelism on 2 processes match it (and freeze the base too), and PASO
(threshold 0, 2 processes) reproduces it exactly.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from paso_core import load_run
from paso_core.config import RunConfig, validate
from paso_core.equivalence import EXACT, Case, run_matrix
from paso_core.optim.updates import OptimSpec, make_torch_optimizer
from paso_core.options import ConfigError
from paso_core.tasks import families, lora
from paso_core.tasks.base import apply_blocks
from paso_core.tasks.text import TextTask

CPU = torch.device("cpu")
TINY = ("gpt2-tiny", "llama-tiny", "qwen3next-tiny")
pytestmark = pytest.mark.usefixtures("paso_cache")


def text_cfg(model: str = "llama-tiny", **options) -> RunConfig:
    return validate(RunConfig.from_dict({"task": "text", "dataset": "pydoc", "model": model, "block_size": 16,
                                         "batch_size": 4, "n_positions": 32, **options}))


# --------------------------------------------------------------------------- parsing
def test_parse_string_dict_and_none() -> None:
    spec = lora.parse_lora("r=8, alpha=16, targets=attention")
    assert spec == lora.LoraSpec(rank=8, alpha=16.0, targets="attention", dropout=0.0)
    assert lora.parse_lora({"r": 8, "alpha": 16, "targets": "attention"}) == spec
    assert lora.parse_lora(spec) is spec and lora.parse_lora(None) is None
    assert lora.parse_lora("r=2,alpha=0.5,targets=q_proj+v_proj,dropout=0.1").targets == "q_proj+v_proj"
    assert lora.parse_lora(spec.describe()) == spec


@pytest.mark.parametrize("value, message", [
    ("r8,alpha=16,targets=attention", "'r8' is not key=value"),
    ("r=8,alpha=16,targets=attention,scale=2", r"unknown key\(s\) \['scale'\]; valid keys: r, alpha, targets, dropout"),
    ("r=8,alpha=16", "lacks targets"),
    ("r=0,alpha=16,targets=attention", "r=0 is not valid; the rank must be an integer >= 1"),
    ("r=two,alpha=16,targets=attention", "r='two' is not valid; give an integer"),
    ({"r": 2.5, "alpha": 1, "targets": "mlp"}, "r=2.5 is not valid; give an integer"),
    ("r=8,alpha=0,targets=attention", "alpha=0.0 is not valid; it must be a finite number > 0"),
    ("r=8,alpha=-1,targets=attention", "alpha=-1.0 is not valid"),
    ("r=8,alpha=16,targets=attention,dropout=1", r"dropout=1.0 is not valid; it must be a number in \[0, 1\)"),
    ("r=8,alpha=16,targets=q_proj+", "targets='q_proj\\+' is not valid; give one of attention, full_attention"),
    ("r=8,r=4,alpha=16,targets=mlp", "gives 'r' twice"),
    (8, "give None or 'r=8,alpha=16,targets=attention'"),
])
def test_bad_specs_fail_before_launch(value, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        lora.parse_lora(value)
    with pytest.raises(ConfigError, match=message):
        text_cfg(lora=value)


def test_targets_matching_nothing_name_what_exists() -> None:
    with pytest.raises(ConfigError, match=r"'qkv' matches no Linear/Conv1D module of LlamaForCausalLM; "
                                          r"its module names end in: down_proj, gate_proj, k_proj, o_proj"):
        text_cfg("llama-tiny", lora="r=4,alpha=8,targets=q_proj+qkv")
    with pytest.raises(ConfigError, match="c_attn"):  # GPT-2's own names are listed
        text_cfg("gpt2-tiny", lora="r=4,alpha=8,targets=q_proj")
    assert text_cfg("gpt2-tiny", lora="r=4,alpha=8,targets=c_attn").lora


def test_lora_needs_the_text_task() -> None:
    with pytest.raises(ConfigError, match="lora='r=4,alpha=8,targets=attention' needs task='text' "
                                          "\\(got task='vision'\\)"):
        validate(RunConfig.from_dict({"task": "vision", "lora": "r=4,alpha=8,targets=attention"}))


# --------------------------------------------------------------------------- what is trained
@pytest.fixture(scope="module", params=[(m, t) for m in TINY for t in ("attention", "full_attention", "mlp", "all-linear")],
                ids=lambda p: "-".join(p))
def adapted(request) -> tuple[TextTask, torch.nn.Module]:
    model_name, targets = request.param
    task = TextTask(text_cfg(model_name, lora=f"r=4,alpha=8,targets={targets}"), CPU)
    return task, task.build_model()


def test_trainable_parameters_are_exactly_the_adapters(adapted) -> None:
    task, model = adapted
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = {n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    assert trainable == adapters and trainable
    modules = lora.adapted_modules(model)
    assert modules == lora.target_names(model, task.lora.targets)
    assert len(adapters) == 2 * len(modules)
    for name in modules:  # rank r everywhere; B starts at zero, so the initial model is the base model
        a = model.get_submodule(name).lora_A["default"].weight
        b = model.get_submodule(name).lora_B["default"].weight
        assert a.shape[0] == task.lora.rank and b.shape[1] == task.lora.rank and not b.any()
    optimizer = make_torch_optimizer(OptimSpec.from_config(task.cfg), model.parameters())
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for n, p in model.named_parameters() if n in trainable}
    summary = task.describe()["lora"]
    assert summary["trainable_parameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary["total_parameters"] == task.describe()["parameters"] and summary["spec"] == task.lora.describe()


def test_adapted_model_still_cuts_into_blocks(adapted) -> None:
    task, model = adapted
    x = task.inputs(task.train_batch(0))
    with torch.no_grad():
        whole = model(input_ids=x, use_cache=False).logits
        blocks = apply_blocks([b for _, b in task.model_blocks(model)], x)
    assert torch.equal(whole, blocks)


def test_full_attention_adapts_only_qwen3next_softmax_layers() -> None:
    task = TextTask(text_cfg("qwen3next-tiny", lora="r=4,alpha=8,targets=full_attention"), CPU)
    model = task.build_model()
    layer_types = families.built_shape("qwen3next-tiny")["layer_types"]
    expected = [f"model.layers.{i}.self_attn.{p}" for i, kind in enumerate(layer_types) if kind == "full_attention"
                for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    assert lora.adapted_modules(model) == expected
    everything = lora.target_names(model, "attention")
    assert any(".linear_attn." in n for n in everything) and set(expected) < set(everything)


def test_adapters_are_the_same_on_every_build() -> None:
    task = TextTask(text_cfg("qwen3next-tiny", lora="r=4,alpha=8,targets=attention"), CPU)
    first, second = task.build_model().state_dict(), task.build_model().state_dict()
    torch.manual_seed(12345)  # the global RNG state must not matter
    third = task.build_model().state_dict()
    assert any("lora_A" in k for k in first)
    for k in first:
        assert torch.equal(first[k], second[k]) and torch.equal(first[k], third[k]), k


# --------------------------------------------------------------------------- real runs
RUN = dict(task="text", dataset="pydoc", model="qwen3next-tiny", lora="r=4,alpha=8,targets=full_attention",
           block_size=16, batch_size=4, eval_batch_size=64, n_positions=32, steps=4, lr=2e-2, optimizer="adam",
           eval_test=False)
#: DDP averages two half-batch gradients (sharded/staged engines likewise): float32 rounding,
#: carried on by Adam over 4 steps (measured <= 1e-6).
DDP_RTOL = 1e-4


def test_serial_lora_trains_adapters_only_and_ddp_paso_match(tmp_path) -> None:
    cases = [Case("serial-lora", {**RUN, "method": "serial"}, rtol=EXACT),
             Case("ddp-lora", {**RUN, "method": "ddp", "nproc": 2}, rtol=DDP_RTOL),
             # the sharded and staged engines: same 2-rank launch (fsdp2_tp: the sharding matrix)
             *[Case(f"{method}-lora", {**RUN, "method": method, "nproc": 2, **extra}, rtol=DDP_RTOL)
               for method, extra in (("naive_dp", {}), ("fsdp", {}), ("fsdp2", {}), ("tp", {}),
                                     ("pp", {"microbatches": 2}), ("model_parallel", {}))],
             # PASO with threshold 0 replays serial training exactly (same launch as ddp: 2 ranks)
             Case("paso-lora", {**RUN, "method": "paso", "P": 2, "threshold": 0.0, "ema_decay": 1.0}, rtol=EXACT)]
    table = run_matrix(cases, tmp_path)
    print(table[["case", "world_size", "max_abs_diff", "rel_displacement_err"]].to_string())
    assert table["passed"].all(), table.to_string()
    task = TextTask(text_cfg(**{k: v for k, v in RUN.items() if k not in ("task", "dataset")}), CPU)
    initial = task.build_model()
    base = {k: v for k, v in initial.state_dict().items() if "lora_" not in k}

    @torch.no_grad()
    def seen_loss(model: torch.nn.Module) -> float:
        """Mean loss over the batches the run trained on (each step draws a new batch, so the
        logged train losses of 4 steps are not comparable with each other)."""
        return sum(float(task.loss(model, task.train_batch(t), t)) for t in range(RUN["steps"])) / RUN["steps"]

    before = seen_loss(initial)
    for path in table["path"]:
        run = load_run(path)
        losses = run.metrics.loc[run.metrics["kind"] == "train", "train_loss"].to_numpy()
        assert len(losses) == RUN["steps"] and all(math.isfinite(v) for v in losses)
        with torch.no_grad():  # the run started from the model built here (adapters included)
            assert losses[0] == pytest.approx(float(task.loss(initial, task.train_batch(0), 0)), rel=1e-5)
        final = torch.load(os.path.join(path, "final.pt"), weights_only=True)
        trained = task.build_model()
        trained.load_state_dict(final, strict=True)
        after = seen_loss(trained)
        print(f"{path}: mean loss on the trained batches {before:.4f} -> {after:.4f}")
        assert after < before, f"{path}: LoRA did not lower the loss ({before} -> {after})"
        assert set(final) == set(initial.state_dict())
        for k, v in base.items():
            assert torch.equal(final[k], v), f"{path}: base weight {k} changed"
        moved = [k for k in final if "lora_B" in k and final[k].any()]
        assert moved, "the adapters did not train"
        recorded = run.summary["task_info"]["lora"]
        assert recorded["spec"] == lora.parse_lora(RUN["lora"]).describe()
        assert recorded["trainable_parameters"] == sum(v.numel() for k, v in final.items() if "lora_" in k)
