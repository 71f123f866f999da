"""The ``pp`` and ``model_parallel`` methods on torch.distributed.pipelining, against serial.

Three launches in all: (1) two ``torch.multiprocessing`` gloo ranks push one batch through
every schedule (GPipe, 1F1B, interleaved 1F1B with 2 stages per rank = 4 stages) on GPT-2
tiny (tied LM head) and the vision CNN, and the stages' per-parameter gradients and loss are
compared with the single-process model's; (2) the equivalence matrix: after a few Adam steps
with clipping, every run's full weights match plain serial training (``serial_reference``);
its 2-process cases share one launch (``pp`` and ``model_parallel`` on every model family), the
pp x dp case (4 processes) has its own, with rank 0's collectives slowed to check that the
metrics' compute time leaves out gradient synchronisation and the optimizer.
Plus every bad input, rejected by ``validate`` before any launch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from paso_core.config import RunConfig, validate
from paso_core.equivalence import Case, run_matrix
from paso_core.options import ConfigError

from test_equivalence import assert_time_split_is_disjoint

pytestmark = pytest.mark.usefixtures("paso_cache")

TEXT = dict(task="text", dataset="pydoc", model="gpt2-tiny", block_size=16, batch_size=8, eval_batch_size=64,
            n_positions=32, eval_test=False)
CNN = dict(task="vision", dataset="digits", model="cnn", batch_size=16, eval_batch_size=512)
TRAIN = dict(steps=3, optimizer="adam", lr=1e-3, grad_clip=0.5, lr_schedule="cosine", warmup_steps=1)
#: Micro-batch gradients summed then divided by m round differently from the full batch's
#: (and the tied gradient is a sum of two stages' parts): relative L2 error of the
#: displacement after 3 clipped Adam steps, measured up to ~5e-6 here.
PIPELINE_RTOL = 2e-5
#: Relative L2 error of a pipelined gradient against the single-process one (float32 rounding).
GRAD_RTOL = 1e-5
SCHEDULES = [("gpipe", 2, 1), ("1f1b", 2, 1), ("interleaved_1f1b", 2, 2)]


def config(**options: Any) -> RunConfig:
    return validate(RunConfig.from_dict({"progress": False, **options}))


# --------------------------------------------------------------------------- 1: gradients of one batch
@dataclass
class FakeContext:
    """What :func:`build_pipeline` reads from a worker context: the pipeline group and device."""

    comm: Any
    device: torch.device

    def group(self, name: str) -> Any:
        assert name == "pp"
        return self.comm


def _gradient_worker(rank: int, world: int, init_file: str, out_dir: str, cases: list[dict]) -> None:
    import torch.distributed as dist

    from paso_core.distributed import Comm
    from paso_core.pipeline.stages import build_pipeline
    from paso_core.tasks import build_task

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ctx = FakeContext(Comm(rank, world, torch.device("cpu")), torch.device("cpu"))
        results = []
        for case in cases:
            cfg = validate(RunConfig.from_dict(case["options"]))
            task = build_task(cfg, ctx.device)
            model = task.build_model()
            pipe = build_pipeline(ctx, task, model, case["schedule"], case["m"], case["v"], "uniform")
            batch = task.train_batch(1)
            loss = pipe.step(task, batch)
            pipe.sum_tied_grads_()
            grads = {name: p.grad.detach().clone() for name, p in pipe.mirror.named_parameters()}
            parts = ctx.comm.gather_objects((loss, grads), dst=0)
            if rank == 0:
                serial = task.build_model()
                serial_loss = task.loss(serial, batch, 1)
                serial_loss.backward()
                reference = dict(serial.named_parameters(remove_duplicate=False))
                merged = {name: g for _, part in parts for name, g in part.items()}
                errors = {name: float((merged[name] - reference[name].grad).norm()
                                      / reference[name].grad.norm().clamp_min(1e-30)) for name in merged}
                losses = [part_loss for part_loss, _ in parts if part_loss is not None]
                results.append({"name": case["name"], "loss": losses, "serial_loss": float(serial_loss.detach()),
                                "errors": errors, "missing": sorted(set(reference) - set(merged)),
                                "stages": pipe.info["stage_blocks"]})
        if rank == 0:
            Path(out_dir, "gradients.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gradient_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("pipeline_grads")
    cases = [{"name": f"{model}-{schedule}", "schedule": schedule, "m": m, "v": v,
              "options": {**options, "method": "pp", "nproc": 2, "pp_schedule": schedule, "microbatches": m,
                          "stages_per_rank": v}}
             for model, options in (("gpt2", TEXT), ("cnn", CNN)) for schedule, m, v in SCHEDULES]
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(_gradient_worker, args=(2, str(folder / "init"), str(folder), cases), nprocs=2, join=True)
    return {r["name"]: r for r in json.loads((folder / "gradients.json").read_text())}


@pytest.mark.parametrize("model", ["gpt2", "cnn"])
@pytest.mark.parametrize("schedule", [s for s, _, _ in SCHEDULES])
def test_pipelined_gradients_equal_the_single_process_model(gradient_results, model: str, schedule: str) -> None:
    result = gradient_results[f"{model}-{schedule}"]
    assert result["missing"] == []                       # every parameter is on some stage
    assert result["loss"] == [pytest.approx(result["serial_loss"], rel=1e-6)]  # one rank holds the last stage
    worst = max(result["errors"].values())
    assert worst <= GRAD_RTOL, {k: v for k, v in result["errors"].items() if v > GRAD_RTOL}
    n_stages = 4 if schedule == "interleaved_1f1b" else 2
    assert len(result["stages"]) == n_stages


def test_tied_copies_get_the_summed_gradient(gradient_results) -> None:
    """GPT-2's LM head is the embedding: both stages' copies got the full-model gradient."""
    errors = gradient_results["gpt2-1f1b"]["errors"]
    assert errors["lm_head.weight"] <= GRAD_RTOL and errors["transformer.wte.weight"] <= GRAD_RTOL


# --------------------------------------------------------------------------- 2: the equivalence matrix
def families_available() -> list[str]:
    from paso_core.config import TEXT_MODELS

    return [m for m in ("llama-tiny", "qwen3next-tiny") if m in TEXT_MODELS]


CASES = [
    Case("pp-gpipe-gpt2", dict(TEXT, **TRAIN, method="pp", nproc=2, pp_schedule="gpipe", microbatches=2),
         PIPELINE_RTOL),
    Case("pp-1f1b-gpt2", dict(TEXT, **TRAIN, method="pp", nproc=2, pp_schedule="1f1b", microbatches=4),
         PIPELINE_RTOL),
    Case("pp-interleaved-gpt2", dict(TEXT, **TRAIN, method="pp", nproc=2, pp_schedule="interleaved_1f1b",
                                     stages_per_rank=2, microbatches=4), PIPELINE_RTOL),
    Case("pp-1f1b-cnn-params", dict(CNN, **TRAIN, method="pp", nproc=2, microbatches=4, split="params"),
         PIPELINE_RTOL),
    Case("model_parallel-gpt2-time", dict(TEXT, **TRAIN, method="model_parallel", nproc=2, split="time"),
         PIPELINE_RTOL),
    Case("model_parallel-cnn-points", dict(CNN, **TRAIN, method="model_parallel", nproc=2, split=[1]),
         PIPELINE_RTOL),
    Case("pp2xdp2-1f1b-gpt2", dict(TEXT, **TRAIN, method="pp", nproc=4, dp=2, microbatches=2,
                                   inject_fault={"rank": 0, "kind": "slow_comm"}), PIPELINE_RTOL,
         "pp x dp: two replicas of a 2-stage pipeline (the one 4-process launch); rank 0's collectives slowed "
         "to check the time split"),
    *[Case(f"pp-1f1b-{model}", dict(TEXT, **TRAIN, model=model, method="pp", nproc=2, microbatches=2),
           PIPELINE_RTOL) for model in families_available()],
    *[Case(f"model_parallel-{model}", dict(TEXT, **TRAIN, model=model, method="model_parallel", nproc=2),
           PIPELINE_RTOL) for model in families_available()],
]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    table = run_matrix(CASES, tmp_path_factory.mktemp("pp_matrix"))
    print("\n" + table.drop(columns=["note", "path"]).to_string())
    return table


@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_pipeline_methods_match_serial(matrix: pd.DataFrame, case: str) -> None:
    row = matrix.set_index("case").loc[case]
    assert row["passed"], row.to_dict()


def test_cases_of_one_world_size_share_a_launch(matrix: pd.DataFrame) -> None:
    assert matrix.groupby("world_size")["launch"].nunique().eq(1).all()


def test_gradient_sync_and_optimizer_are_not_compute(matrix: pd.DataFrame) -> None:
    """The replicas' per-parameter all-reduce, tied sums and clip norm (slowed on rank 0; the
    logging rank is 2) are communication, the optimizer step is its own phase: none of them is
    in time_compute_s."""
    assert_time_split_is_disjoint(matrix.set_index("case").loc["pp2xdp2-1f1b-gpt2", "path"])


def test_rows_carry_the_bubble_and_modelled_bytes(matrix: pd.DataFrame) -> None:
    import paso_core
    from paso_core.metrics import train_rows
    from paso_core.pipeline.schedule_oracle import bubble_of

    for _, case in matrix.iterrows():
        result = paso_core.load_run(case["path"])
        rows = train_rows(result.metrics)
        cfg, summary = result.config, result.summary
        if cfg["method"] == "pp":
            m, n, v, schedule = cfg["microbatches"], cfg["nproc"] // cfg["dp"], cfg["stages_per_rank"], cfg["pp_schedule"]
        else:
            m, n, v, schedule = 1, 2, 1, "gpipe"
        assert rows["bubble_schedule"].eq(bubble_of(schedule, m, n, v)).all(), case["case"]
        assert rows["bubble_measured"].notna().all() and (rows["bubble_measured"] < 1).all()
        assert len(summary["bubble_measured_per_rank"]) == cfg["nproc"]  # every rank of the world
        assert rows["bytes_modelled"].iloc[-1] >= cfg["steps"] * summary["modelled_bytes_per_step"] > 0
        if cfg["task"] == "text" and v == 1:  # one boundary: the logging (last) stage sends hidden-state grads
            from paso_core.tasks.families import built_shape

            hidden = built_shape(cfg["model"])["hidden"]
            rows_per_pipeline = cfg["batch_size"] // cfg.get("dp", 1)
            assert summary["modelled_bytes_per_step"] == rows_per_pipeline * cfg["block_size"] * hidden * 4
        stages = summary["stage_blocks"]
        assert [b for stage in stages for b in stage] == summary["block_names"]  # contiguous, complete
        assert len(stages) == n * v and all(stages)


# --------------------------------------------------------------------------- bad input, before launch
PP = dict(TEXT, method="pp", nproc=2)


@pytest.mark.parametrize("options,message", [
    (dict(PP, pp_schedule="zero_bubble"), r"pp_schedule='zero_bubble' is not valid; choose one of: gpipe, 1f1b, "
                                          r"interleaved_1f1b"),
    (dict(PP, microbatches=3), r"batch_size=8 is not divisible by 3 \(dp=1 shards x microbatches=3\)"),
    (dict(PP, microbatches=0), r"microbatches=0 is not valid; it must be an integer >= 1"),
    (dict(PP, pp_schedule="interleaved_1f1b", stages_per_rank=1),
     r"stages_per_rank=1 is not valid for pp_schedule='interleaved_1f1b'; it needs stages_per_rank >= 2"),
    (dict(PP, pp_schedule="gpipe", stages_per_rank=2),
     r"stages_per_rank=2 is not valid for pp_schedule='gpipe'.*use stages_per_rank=1"),
    (dict(PP, pp_schedule="1f1b", microbatches=1), r"microbatches=1 is not valid for pp_schedule='1f1b' with 2 "
                                                    r"stages; torch's 1F1B needs microbatches >= 2"),
    (dict(PP, pp_schedule="interleaved_1f1b", stages_per_rank=2, microbatches=5, batch_size=10),
     r"microbatches=5 is not valid: .*multiple of max\(1, microbatches // ranks\)=2"),
    (dict(PP, nproc=1), r"method='pp' needs at least 2 pipeline ranks; got nproc\*nnodes=1"),
    (dict(PP, nproc=2, dp=2), r"method='pp' needs at least 2 pipeline ranks; got nproc\*nnodes=2 / dp=2 = 1"),
    (dict(PP, nproc=6, dp=4), r"dp=4 does not divide nproc\*nnodes=6"),
    (dict(PP, nproc=4, dp=2, microbatches=8), r"batch_size=8 is not divisible by 16 \(dp=2 shards x microbatches=8\)"),
    (dict(PP, dp=0), r"dp=0 is not valid; it must be an integer >= 1"),
    (dict(TEXT, method="model_parallel", nproc=1), r"method='model_parallel' needs at least 2 processes"),
    (dict(TEXT, method="model_parallel", nproc=2, microbatches=2), r"option microbatches=2 belongs to method\(s\) pp"),
])
def test_bad_pipeline_options_are_refused_before_launch(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**options)


def test_old_torch_on_cpu_is_refused_naming_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    from paso_core.pipeline.stages import check_torch_version

    with pytest.raises(ConfigError, match=r"torch >= 2\.10; this is torch 2\.9\.1.*strategies notes"):
        check_torch_version(on_cuda=False, version="2.9.1")
    check_torch_version(on_cuda=True, version="2.9.1")   # the CUDA/NCCL path is not refused
    check_torch_version(on_cuda=False, version="2.10.0")
    monkeypatch.setattr(torch, "__version__", "2.7.1+cpu")
    for method in ("pp", "model_parallel"):
        with pytest.raises(ConfigError, match=r"this is torch 2\.7\.1\+cpu"):
            config(**dict(TEXT, method=method, nproc=2, device="cpu"))


def test_pipeline_methods_are_registered_with_their_options() -> None:
    from paso_core.methods import get_method, method_names

    assert {"pp", "model_parallel"} <= set(method_names())
    cfg = config(**PP)
    assert (cfg.pp_schedule, cfg.microbatches, cfg.split, cfg.stages_per_rank, cfg.dp) == ("1f1b", 4, "uniform", 1, 1)
    assert get_method("pp").dims(cfg).pp == 2 and cfg.world_size == 2
    hybrid = config(**dict(PP, nproc=4, dp=2, microbatches=2))
    assert get_method("pp").dims(hybrid).degrees() == {**get_method("pp").dims(cfg).degrees(), "pp": 2,
                                                        "dp_replicate": 2}
    assert get_method("pp").default_nproc(get_method("pp").options(dp=3)) == 6
