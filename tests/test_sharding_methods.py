"""FSDP1, FSDP2, tensor parallel and FSDP2 x TP against serial training, their memory, their
plans and their refusals before launch.

Two launches in all (2 and 4 workers, :func:`paso_core.equivalence.run_matrix`); everything
else is pure functions on tiny models, without processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from paso_core import sharding
from paso_core.config import RunConfig, validate
from paso_core.equivalence import Case, run_matrix
from paso_core.options import ConfigError

TEXT = dict(task="text", dataset="pydoc", block_size=16, n_positions=32, batch_size=4, steps=3, lr=0.05,
            optimizer="momentum", eval_test=False, eval_batch_size=64)
DIGITS = dict(task="vision", dataset="digits", model="cnn", batch_size=32, steps=3, lr=0.05, optimizer="momentum")
#: Sums of per-shard gradients round differently from the full batch's (relative L2 error of
#: the displacement after 3 momentum steps; measured ~1e-7 to 1e-6).
SUM_RTOL = 1e-5
#: With clipping, serial training's own float32 gradient norm is off the float64 norm by
#: ~3e-5 on gpt2-tiny (measured), and a sharded norm sums in another order: the clip
#: coefficient, hence the displacement, agrees only to that.
CLIP_RTOL = 1e-4
#: bf16 compute (FSDP2 MixedPrecisionPolicy, fp32 reduction): 8 mantissa bits, ~4e-3 per op.
BF16_RTOL = 5e-2
#: FSDP2 pads dim-0 shards to equal size and keeps a few scalars whole: per-rank state is
#: 1/world of serial's within this factor.
MEMORY_FACTOR = 1.25

CASES = [
    Case("fsdp-gpt2-clip", dict(TEXT, model="gpt2-tiny", method="fsdp", nproc=2, grad_clip=0.5, eval_every=2),
         CLIP_RTOL),
    Case("fsdp-cnn", dict(DIGITS, method="fsdp", nproc=2), SUM_RTOL),
    Case("fsdp2-gpt2", dict(TEXT, model="gpt2-tiny", method="fsdp2", nproc=2), SUM_RTOL),
    Case("fsdp2-gpt2-ac-clip", dict(TEXT, model="gpt2-tiny", method="fsdp2", nproc=2, activation_checkpointing=True,
                                    grad_clip=0.5), CLIP_RTOL),
    Case("fsdp2-gpt2-bf16", dict(TEXT, model="gpt2-tiny", method="fsdp2", nproc=2, mixed_precision="bf16"), BF16_RTOL),
    Case("fsdp2-qwen3next", dict(TEXT, model="qwen3next-tiny", method="fsdp2", nproc=2), SUM_RTOL),
    # every sharding engine on every model family (same 2-process launch; serial references shared)
    Case("fsdp-llama", dict(TEXT, model="llama-tiny", method="fsdp", nproc=2), SUM_RTOL),
    Case("fsdp-qwen3next", dict(TEXT, model="qwen3next-tiny", method="fsdp", nproc=2), SUM_RTOL),
    Case("fsdp2-llama", dict(TEXT, model="llama-tiny", method="fsdp2", nproc=2), SUM_RTOL),
    Case("tp-llama-clip", dict(TEXT, model="llama-tiny", method="tp", nproc=2, grad_clip=0.5), CLIP_RTOL),
    Case("tp-qwen3next", dict(TEXT, model="qwen3next-tiny", method="tp", nproc=2), SUM_RTOL),
    Case("tp-cnn", dict(DIGITS, method="tp", nproc=2), SUM_RTOL),
    Case("fsdp2-gpt2-w4", dict(TEXT, model="gpt2-tiny", method="fsdp2", nproc=4), SUM_RTOL),
    Case("fsdp2_tp-qwen3next-w4", dict(TEXT, model="qwen3next-tiny", method="fsdp2_tp", nproc=4, tp=2), SUM_RTOL),
    Case("fsdp2_tp-qwen3next-lora-w4", dict(TEXT, model="qwen3next-tiny", method="fsdp2_tp", nproc=4, tp=2,
                                            lora="r=4,alpha=8,targets=full_attention"), SUM_RTOL),
    Case("fsdp2_tp-llama-w4", dict(TEXT, model="llama-tiny", method="fsdp2_tp", nproc=4, tp=2, grad_clip=0.5,
                                     eval_every=2),
         CLIP_RTOL),
]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    table = run_matrix(CASES, tmp_path_factory.mktemp("sharding"))
    with pd.option_context("display.float_format", "{:.3g}".format):
        print("\n" + table.drop(columns=["note", "path"]).to_string())
    return table


def summary_of(matrix: pd.DataFrame, case: str) -> dict:
    return json.loads((Path(matrix.set_index("case").loc[case, "path"]) / "summary.json").read_text())


@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_engine_matches_serial(matrix: pd.DataFrame, case: str) -> None:
    row = matrix.set_index("case").loc[case]
    assert row["passed"], row.to_dict()


def test_two_launches_only(matrix: pd.DataFrame) -> None:
    assert sorted(matrix.groupby("world_size")["launch"].unique().map(len)) == [1, 1]


@pytest.mark.parametrize("case", ["fsdp-gpt2-clip", "fsdp2_tp-llama-w4"])
def test_mid_run_evaluation_of_sharded_models(matrix: pd.DataFrame, case: str) -> None:
    """eval_every=2 gathers the shards mid-run (FSDP1 root, 2-D DTensors) and scores them."""
    import paso_core
    from paso_core.metrics import eval_rows

    rows = eval_rows(paso_core.load_run(matrix.set_index("case").loc[case, "path"]).metrics)
    assert list(rows["steps_done"]) == [2] and rows["eval_val_loss"].notna().all()


def serial_state_bytes(options: dict) -> int:
    """Parameters + optimizer state of serial training after one step, counted the same way."""
    from paso_core.memory import training_state_bytes
    from paso_core.optim.updates import OptimSpec, make_torch_optimizer
    from paso_core.tasks import build_task

    cfg = validate(RunConfig.from_dict({**options, "method": "serial", "nproc": 1, "progress": False}))
    task = build_task(cfg, torch.device("cpu"))
    model = task.build_model()
    optimizer = make_torch_optimizer(OptimSpec.from_config(cfg), model.parameters())
    task.loss(model, task.train_batch(0), 0).backward()
    optimizer.step()
    sizes = training_state_bytes(model, optimizer)
    return sizes["params"] + sizes["optimizer"]


@pytest.mark.parametrize("case,world", [("fsdp2-gpt2", 2), ("fsdp2-gpt2-w4", 4)])
def test_fsdp2_state_per_rank_is_a_world_fraction_of_serial(matrix: pd.DataFrame, case: str, world: int) -> None:
    summary = summary_of(matrix, case)
    per_rank = [(a + b) * 2**20 for a, b in zip(summary["mem_params_mb_per_rank"],
                                                summary["mem_optimizer_mb_per_rank"])]
    serial = serial_state_bytes(TEXT | {"model": "gpt2-tiny"})
    assert len(per_rank) == world
    for mine in per_rank:
        assert serial / world / MEMORY_FACTOR <= mine <= serial / world * MEMORY_FACTOR, (per_rank, serial)


def test_tp_summary_names_what_is_split(matrix: pd.DataFrame) -> None:
    """Qwen3-Next: only the full-attention layers (1, 3) and the shared experts are split."""
    summary = summary_of(matrix, "tp-qwen3next")
    col, row = summary["tp_colwise"], summary["tp_rowwise"]
    assert {n.split(".")[2] for n in col if "self_attn" in n} == {"1", "3"}
    assert all(("self_attn" in n) or ("shared_expert." in n) for n in col + row), col + row
    assert any("linear_attn" in n for n in summary["tp_replicated"])
    assert any(n.endswith("mlp.experts") for n in summary["tp_replicated"])


def test_modelled_bytes_follow_the_formulas(matrix: pd.DataFrame) -> None:
    """Each method's modelled bytes are its formula per step plus the loop's own bookkeeping
    (the loss all-reduce, the per-step all-gather of timings), which is the same for every
    run of one world size and step count: so the remainders of three methods must agree."""
    steps = TEXT["steps"]
    assert steps == DIGITS["steps"]
    formulas = {
        "fsdp2-gpt2": sharding.fsdp_step_bytes(summary_of(matrix, "fsdp2-gpt2")["n_params"], 2) * steps,
        "fsdp-cnn": sharding.fsdp_step_bytes(summary_of(matrix, "fsdp-cnn")["n_params"], 2) * steps,
        # the CNN's row-parallel output: batch x 10 classes, forward + backward, ring 2(n-1)/n
        "tp-cnn": sharding.tp_step_bytes([DIGITS["batch_size"] * 10], 2) * steps,
    }
    remainders = set()
    for case, formula in formulas.items():
        per_rank = summary_of(matrix, case)["bytes_modelled_per_rank"]
        assert len(set(per_rank)) == 1, (case, per_rank)
        remainders.add(per_rank[0] - formula)
    assert len(remainders) == 1 and 0 <= remainders.pop() < min(formulas.values()), remainders


# ------------------------------------------------------------------ no processes
def tiny_hf(family: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from paso_core.tasks import text_models as tm

    config = tm.built_config(f"{family}-tiny", vocab_size=64, n_positions=16)
    return AutoModelForCausalLM.from_config(config)


def test_shard_units_are_called_submodules_and_leave_ties_to_the_root() -> None:
    from paso_core.tasks.text_models import decoder_blocks

    model = tiny_hf("gpt2")
    units = dict(sharding.shard_units(model, decoder_blocks(model)))
    assert "transformer.h.0" in units and "transformer.h.1" in units and "transformer.wpe" in units
    assert "transformer.wte" not in units and "lm_head" not in units  # tied: in the root group
    names = {id(m) for _, m in model.named_modules()}
    assert all(id(m) in names for m in units.values())


def test_tp_plans_per_family() -> None:
    llama = sharding.tp_plan(tiny_hf("llama"))
    assert llama.styles["model.layers.0.self_attn.q_proj"] == "colwise"
    assert llama.styles["model.layers.1.self_attn.o_proj"] == "rowwise"
    assert llama.styles["model.layers.1.mlp.down_proj"] == "rowwise"
    assert len(llama.styles) == 2 * 7
    qwen = sharding.tp_plan(tiny_hf("qwen3next"))
    assert not any("linear_attn" in n or ".experts" in n for n in qwen.styles)
    assert "model.layers.0.mlp.shared_expert.gate_proj" in qwen.styles
    assert "model.layers.0.self_attn.q_proj" not in qwen.styles  # layer 0 is gated-DeltaNet
    # q_norm/k_norm act on this rank's heads only: their gradients are partial, summed over tp
    assert qwen.partial_grads == [f"model.layers.{i}.self_attn.{n}_norm.weight" for i in (1, 3) for n in "qk"]
    assert llama.partial_grads == []


def test_mixed_clip_equals_torch_clip_on_plain_tensors() -> None:
    gen = torch.Generator().manual_seed(0)
    a = [torch.nn.Parameter(torch.zeros(n)) for n in (5, 7, 300)]
    b = [torch.nn.Parameter(torch.zeros(n)) for n in (5, 7, 300)]
    for p, q in zip(a, b):
        p.grad = torch.randn(p.shape, generator=gen)
        q.grad = p.grad.clone()
    total = sharding.clip_grad_norm_mixed_(a, 0.3)
    expected = float(torch.nn.utils.clip_grad_norm_(b, 0.3))
    assert total == pytest.approx(expected, rel=1e-6)
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


def test_byte_formulas() -> None:
    assert sharding.fsdp_step_bytes(1000, 4) == int(3 * 3 / 4 * 1000 * 4)
    assert sharding.fsdp_step_bytes(1000, 1) == 0
    assert sharding.fsdp_step_bytes(1000, 2, gather_elt=2) == int(1 / 2 * 1000 * (2 * 2 + 4))
    assert sharding.tp_step_bytes([10, 20], 2) == int(4 * 1 / 2 * 30 * 4)


def test_fsdp2_torch_versions() -> None:
    bad = sharding.fsdp2_cpu_problem("2.7.1+cpu", "cpu")
    assert bad is not None and "2.7.1+cpu" in bad and "world size" in bad
    assert "world size" in sharding.fsdp2_cpu_problem("2.8.0", "cpu")
    for older in ("2.5.1+cu124", "2.6.0"):  # stops at the first step: refused before launch instead
        assert "requires CUDA for streams" in sharding.fsdp2_cpu_problem(older, "cpu")
    assert sharding.fsdp2_cpu_problem("2.5.1", "cuda") is None  # the image's torch, via _composable.fsdp
    assert sharding.fsdp2_cpu_problem("2.9.1", "cpu") is None
    assert sharding.fsdp2_cpu_problem("2.14.1", "cpu") is None
    assert sharding.fsdp2_cpu_problem("2.7.1", "cuda") is None


def config(**options) -> RunConfig:
    return validate(RunConfig.from_dict({"progress": False, **options}))


@pytest.mark.parametrize("options,message", [
    (dict(TEXT, model="llama-tiny", method="tp", nproc=4), r"tp=4 does not divide the KV heads=2 .*\[1, 2\]"),
    (dict(TEXT, model="llama-tiny", method="fsdp2_tp", nproc=4, tp=4), r"tp=4 does not leave .* choose tp among \[1, 2\]"),
    (dict(TEXT, model="llama-tiny", method="fsdp2_tp", nproc=3, tp=2), r"tp=2 .* nproc\*nnodes=3"),
    (dict(TEXT, model="gpt2-tiny", method="tp", nproc=2), r"model='gpt2-tiny'.*fused Conv1D"),
    (dict(TEXT, model="gpt2-tiny", method="fsdp2_tp", nproc=4), r"model='gpt2-tiny'.*mixes q, k and v"),
    (dict(DIGITS, model="vit", method="tp", nproc=2), r"model='vit'.*fused in_proj.*choose model among cnn"),
    (dict(TEXT, model="gpt2-tiny", method="fsdp2", nproc=2, mixed_precision="fp8"),
     r"mixed_precision='fp8' is not valid; choose one of: none, bf16"),
    (dict(TEXT, model="gpt2-tiny", method="fsdp", nproc=3), r"batch_size=4 is not divisible by 3"),
])
def test_bad_input_is_refused_before_launch(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**options)


def test_fsdp2_refused_on_torch_with_the_gloo_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "__version__", "2.7.1+cpu")
    for method, nproc in (("fsdp2", 2), ("fsdp2_tp", 4)):
        with pytest.raises(ConfigError, match=rf"method='{method}' refused: .*torch 2.7.1\+cpu .*world size"):
            config(**TEXT, model="llama-tiny", method=method, nproc=nproc, device="cpu")
