"""Tests for OptEx: the pure helpers, the single-process reference, one torchrun run end to
end (checked against the reference), bad input, the report helpers, and the notebook at
smoke scale."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import paso_core
from paso_core import ConfigError, RunConfig, report, validate
from paso_core.launch import launch_all
from paso_core.methods.optex import (
    OFFICIAL_JAX,
    OptexCore,
    active_workers,
    iterations_needed,
    proxy_rollout,
    simulate,
    simulate_iteration,
)
from paso_core.optim.updates import OptimSpec, clip_flat_, functional_step, init_state, make_torch_optimizer
from paso_core.runs import RunResult
from paso_core.tasks.synthetic import FUNCTIONS, SyntheticTask

ROOT = Path(__file__).resolve().parent.parent
REQUIRED_COLUMNS = {"iteration", "steps_done", "train_loss", "lengthscale", "grad_est_cosine",
                    "time_compute_s", "time_comm_s", "time_proxy_s", "grad_evals"}


def _uniform(d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(d, generator=gen, dtype=dtype) * 2 - 1


def _grad_fn(function: str, clip: float | None = None):
    """(x, step) -> (clipped gradient, loss) of a synthetic function, like a worker computes it."""
    f = FUNCTIONS[function]

    def grad(x: torch.Tensor, step: int) -> tuple[torch.Tensor, float]:
        p = x.detach().clone().requires_grad_(True)
        loss = f(p)
        loss.backward()
        return clip_flat_(p.grad, clip), float(loss.detach())

    return grad


def _vanilla(spec: OptimSpec, x0: torch.Tensor, grad, steps: int) -> torch.Tensor:
    x, state = x0.clone(), init_state(spec, x0)
    for t in range(steps):
        x, state = functional_step(spec, t, x, state, grad(x, t)[0])
    return x


# ------------------------------------------------------------------ pure helpers
@pytest.mark.parametrize("steps,workers,expected", [(10, 4, 3), (8, 4, 2), (1, 1, 1), (7, 8, 1), (1000, 8, 125)])
def test_iteration_count_is_ceil_t_over_n(steps: int, workers: int, expected: int) -> None:
    assert iterations_needed(steps, workers) == expected
    done, used = 0, []
    while done < steps:
        used.append(active_workers(done, steps, workers))
        done += used[-1]
    assert len(used) == expected and sum(used) == steps
    assert all(n == workers for n in used[:-1]) and 1 <= used[-1] <= workers


@pytest.mark.parametrize("name,wd,clip", [("sgd", 0.0, None), ("momentum", 0.0, None), ("adam", 0.0, None),
                                          ("adamw", 0.01, None), ("adam", 0.0, 0.5)])
def test_proxy_rollout_with_exact_gradient_oracle_is_vanilla_torch(name: str, wd: float, clip: float | None) -> None:
    """The proxy rollout is the optimizer's own recurrence: an exact oracle gives torch.optim's steps."""
    spec = OptimSpec(name=name, lr=1e-2, steps=10, weight_decay=wd, grad_clip=clip)
    x0 = _uniform(40, seed=1)
    f = FUNCTIONS["ackley"]

    def oracle(x: torch.Tensor) -> torch.Tensor:
        p = x.detach().clone().requires_grad_(True)
        f(p).backward()
        return p.grad

    roll = proxy_rollout(spec, 0, x0, init_state(spec, x0), oracle, 6, keep_states={6}, keep_estimates={0, 3})
    assert len(roll.points) == 7 and set(roll.states) == {6} and set(roll.estimates) == {0, 3}
    p = torch.nn.Parameter(x0.clone())
    opt = make_torch_optimizer(spec, [p])
    for j in range(6):
        opt.zero_grad()
        f(p).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p], clip)
        opt.step()
        torch.testing.assert_close(roll.points[j + 1], p.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(roll.points[0], x0, rtol=0, atol=0)


@pytest.mark.parametrize("workers,steps,clip", [(3, 10, 1.0), (4, 8, None), (2, 7, 1.0)])
def test_exact_proxy_optex_equals_vanilla_in_ceil_t_over_n_iterations(workers: int, steps: int,
                                                                      clip: float | None) -> None:
    """With a perfect estimator OptEx *is* vanilla training, N steps per iteration (bitwise)."""
    spec = OptimSpec(name="adam", lr=1e-2, steps=steps, grad_clip=clip)
    x0, grad = _uniform(30, seed=2), _grad_fn("rosenbrock", clip=clip)
    core, records = simulate(spec, x0, grad, steps, workers, history=5, exact_proxy=True)
    assert len(records) == core.book.iterations == iterations_needed(steps, workers)
    assert core.book.grad_evals == core.book.steps_done == steps
    torch.testing.assert_close(core.x, _vanilla(spec, x0, grad, steps), rtol=0, atol=0)


def test_single_worker_optex_is_vanilla() -> None:
    spec = OptimSpec(name="adam", lr=1e-2, steps=6)
    x0, grad = _uniform(20, seed=3), _grad_fn("sphere")
    core, records = simulate(spec, x0, grad, 6, workers=1)
    assert [r["proxy"] for r in records] == ["none"] * 6
    torch.testing.assert_close(core.x, _vanilla(spec, x0, grad, 6), rtol=0, atol=0)


def test_bootstrap_then_gp_and_tuning_schedule() -> None:
    spec = OptimSpec(name="adam", lr=1e-2, steps=30)
    x0, grad = _uniform(25, seed=4), _grad_fn("ackley")
    core, records = simulate(spec, x0, grad, 30, workers=3, history=6, tune_every=4)
    assert [r["proxy"] for r in records] == ["bootstrap"] + ["gp"] * 9
    # first GP iteration (index 1) tunes, then every 4 iterations: 1, 5, 9
    assert core.book.tunes == 3 and core.book.last_tune_iteration == 9
    assert len(core.history) == 6  # ring buffer of T0 pairs
    never, _ = simulate(spec, x0, grad, 30, workers=3, history=6, tune_every=0, lengthscale=0.7)
    assert never.book.tunes == 0 and never.lengthscale == 0.7


def test_gp_proxy_tracks_vanilla_on_a_smooth_problem() -> None:
    """Adam's small steps on a sphere are easy to extrapolate: OptEx ≈ vanilla with N× fewer iterations."""
    steps, workers = 60, 4
    spec = OptimSpec(name="adam", lr=1e-2, steps=steps)
    x0, grad = _uniform(200, seed=5), _grad_fn("sphere")
    core, records = simulate(spec, x0, grad, steps, workers, history=20, tune_every=5)
    cosines = [r["grad_est_cosine"] for r in records if r["proxy"] == "gp"]
    assert max(cosines) < 0.05, cosines
    vanilla = float(FUNCTIONS["sphere"](_vanilla(spec, x0, grad, steps)))
    start = float(FUNCTIONS["sphere"](x0))
    ours = float(FUNCTIONS["sphere"](core.x))
    assert ours < start and abs(ours - vanilla) / (start - vanilla) < 0.05


def test_stale_proxy_holds_the_last_true_gradient_for_every_proxy_step() -> None:
    spec = OptimSpec(name="adam", lr=1e-2, steps=12)
    x0, grad = _uniform(20, seed=7), _grad_fn("ackley")
    core = OptexCore(spec, 4, x0, history=8, lengthscale=1.0, noise=1e-3, tune_every=0, proxy="stale")
    first = simulate_iteration(core, grad, 12)
    assert first["proxy"] == "bootstrap"  # no history yet: worker 0's gradient at x, as for the GP
    core.prepare(4)
    assert core.proxy_kind == "stale"
    roll = core.rollout(4, keep_estimates=range(3))
    last = core.history.gradients()[-1]
    for j in range(3):
        torch.testing.assert_close(roll.estimates[j], last, rtol=0, atol=0)


def test_zero_proxy_under_plain_sgd_is_vanilla_sgd_with_one_step_per_iteration() -> None:
    """SGD does not move on a zero gradient, so every worker evaluates the kept iterate and
    each iteration is exactly one vanilla SGD step: K = T/N iterations do K steps' work."""
    steps, workers = 12, 3
    spec = OptimSpec(name="sgd", lr=0.05, steps=steps)
    x0, grad = _uniform(15, seed=8), _grad_fn("sphere")
    core, records = simulate(spec, x0, grad, steps, workers, history=6, proxy="zero")
    assert [r["proxy"] for r in records] == ["zero"] * (steps // workers)
    assert {r["grad_est_cosine"] for r in records} == {1.0}  # a zero vector is as far from g as can be
    torch.testing.assert_close(core.x, _vanilla(spec, x0, grad, steps // workers), rtol=0, atol=0)


def test_official_jax_settings_zero_start_fixed_lengthscale_mean_sqrt_norm() -> None:
    spec = OptimSpec(name="adam", lr=1e-2, steps=30)
    x0, grad = _uniform(25, seed=9), _grad_fn("ackley")
    core, records = simulate(spec, x0, grad, 30, workers=3, **OFFICIAL_JAX)
    assert [r["proxy"] for r in records] == ["zero"] + ["gp"] * 9  # no bootstrap gradient, then the GP
    assert core.book.tunes == 0 and core.lengthscale == 0.1 and core.history.capacity == 50
    assert core.estimator.normalization == "mean_sqrt_norm"
    xs = core.history.points().double()
    core.estimator.fit(core.history)  # the last fit saw the history before the last iteration's pairs
    assert core.estimator.scale == pytest.approx(float(xs.norm(dim=1).sqrt().mean()))


def test_checkpoint_round_trip_continues_identically() -> None:
    spec = OptimSpec(name="adam", lr=1e-2, steps=24)
    x0, grad = _uniform(30, seed=6), _grad_fn("ackley")
    a = OptexCore(spec, 3, x0, history=5, lengthscale=1.0, noise=1e-3, tune_every=2)
    for _ in range(3):
        simulate_iteration(a, grad, 24)
    b = OptexCore(spec, 3, torch.zeros_like(x0), history=5, lengthscale=1.0, noise=1e-3, tune_every=2)
    b.load_state_dict(a.state_dict())
    while a.book.steps_done < 24:
        simulate_iteration(a, grad, 24)
        simulate_iteration(b, grad, 24)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    assert vars(a.book) == vars(b.book)


# ------------------------------------------------------------------ end to end
E2E = dict(function="ackley", dim=64, steps=9, P=2, history=5, tune_every=2, lr=1e-2, seed=3, grad_clip=5.0,
           progress=False)
E2E_OFFICIAL = dict(function="ackley", dim=48, steps=8, P=2, lr=1e-2, seed=4, progress=False, **OFFICIAL_JAX)


@pytest.fixture(scope="module")
def e2e_runs(tmp_path_factory: pytest.TempPathFactory) -> list[RunResult]:
    """Both end-to-end runs in one torchrun launch (same world)."""
    root = tmp_path_factory.mktemp("optex_e2e")
    return launch_all([RunConfig.from_dict(dict(method="optex", task="synthetic", out_dir=str(root / name), **opts))
                       for name, opts in (("project", E2E), ("official", E2E_OFFICIAL))])


def test_optex_end_to_end_matches_single_process_reference(e2e_runs: list[RunResult]) -> None:
    opts = E2E
    result = e2e_runs[0]
    m, s = result.metrics, result.summary
    assert s["status"] == "completed"
    assert REQUIRED_COLUMNS <= set(m.columns)
    assert len(m) == s["iterations"] == math.ceil(9 / 2)
    assert m["steps_done"].tolist() == [2, 4, 6, 8, 9] and m["workers"].tolist() == [2, 2, 2, 2, 1]
    assert m["grad_evals"].iloc[-1] == s["grad_evals"] == 9
    assert m["proxy"].tolist() == ["bootstrap", "gp", "gp", "gp", "none"]
    assert np.isfinite(m.loc[1:3, "grad_est_cosine"]).all() and math.isfinite(s["final_gap"])
    assert (m[["time_compute_s", "time_comm_s", "time_proxy_s"]] >= 0).all().all()
    # one gradient (d float32) all-gathered per iteration: each rank sends d*4 bytes per iteration,
    # plus worker 0's bootstrap gradient broadcast once
    assert s["bytes_sent_per_rank"][1] >= 5 * 64 * 4 and s["bytes_sent_per_rank"][0] > s["bytes_sent_per_rank"][1]
    # the distributed run follows the single-process reference
    cfg = validate(RunConfig.from_dict(dict(method="optex", **opts)))
    x0 = SyntheticTask(cfg, torch.device("cpu")).build_model().x.detach()
    spec = OptimSpec.from_config(cfg)
    core, records = simulate(spec, x0, _grad_fn("ackley", clip=5.0), 9, 2, history=5, tune_every=2)
    final_x = torch.load(result.path / "final.pt")["x"]
    torch.testing.assert_close(final_x, core.x, rtol=1e-5, atol=1e-6)
    assert s["final_gap"] == pytest.approx(float(FUNCTIONS["ackley"](final_x)), rel=1e-6)
    assert m["train_loss"].iloc[0] == pytest.approx(float(FUNCTIONS["ackley"](x0)), rel=1e-6)
    assert m["train_loss"].tolist() == pytest.approx([r["train_loss"] for r in records], rel=1e-5)


def test_optex_official_jax_settings_under_torchrun_match_the_reference(e2e_runs: list[RunResult]) -> None:
    """The proxy options reach every rank: a zero first estimate (no broadcast), the fixed
    length scale and the official input scaling give the single-process trajectory."""
    opts = E2E_OFFICIAL
    result = e2e_runs[1]
    m, s = result.metrics, result.summary
    assert m["proxy"].tolist() == ["zero", "gp", "gp", "gp"] and s["lengthscale_tunes"] == 0
    assert (s["proxy"], s["first_proxy"], s["normalization"]) == ("gp", "zero", "mean_sqrt_norm")
    assert s["bytes_sent_per_rank"][0] == s["bytes_sent_per_rank"][1]  # no bootstrap broadcast from rank 0
    cfg = validate(RunConfig.from_dict(dict(method="optex", **opts)))
    x0 = SyntheticTask(cfg, torch.device("cpu")).build_model().x.detach()
    core, _ = simulate(OptimSpec.from_config(cfg), x0, _grad_fn("ackley"), 8, 2, **OFFICIAL_JAX)
    torch.testing.assert_close(torch.load(result.path / "final.pt")["x"], core.x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options,match", [
    ({"function": "nope"}, "function='nope'"),
    ({"history": 1}, "history=1"),
    ({"history": 0}, "history=0"),
    ({"lengthscale": 0.0}, "lengthscale=0.0"),
    ({"lengthscale": -1.0}, "lengthscale=-1.0"),
    ({"noise": 0.0}, "noise=0.0"),
    ({"noise": float("nan")}, "noise=nan"),
    ({"tune_every": -1}, "tune_every=-1"),
    ({"proxy": "exact"}, "proxy='exact' is not valid; choose one of: gp, stale, zero"),
    ({"first_proxy": "ones"}, "first_proxy='ones' is not valid; choose one of: true_grad, zero"),
    ({"normalization": "rows"}, "normalization='rows' is not valid; choose one of: spread, max_norm"),
    ({"nproc": 3}, "nproc"),
    ({"P": 20, "nproc": 20}, "P=20 is larger than steps=10"),
    ({"bogus": 1}, "unknown option"),
])
def test_bad_optex_input_fails_before_launch(options: dict, match: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASO_ARTIFACTS", str(tmp_path))
    base = dict(task="synthetic", dim=8, steps=10, P=2, progress=False)
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace("[", r"\[")):
        paso_core.run(method="optex", **{**base, **options})
    assert not (tmp_path / "runs").exists()  # rejected before any run directory or process


# ------------------------------------------------------------------ report helpers
def _fake_run(tmp_path: Path, name: str, losses: list[float], final: float) -> RunResult:
    metrics = pd.DataFrame({"iteration": range(1, len(losses) + 1), "train_loss": losses})
    return RunResult(path=tmp_path / name, summary={"iterations": len(losses), "final_gap": final},
                     metrics=metrics, config={})


def test_run_curve_shift_final_and_iterations_to_reach(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, "a", [8.0, 4.0, 2.0], final=1.0)
    curve = report.run_curve(run, "train_loss", x_offset=-1, final="final_gap")
    assert curve["iteration"].tolist() == [0, 1, 2, 3] and curve["train_loss"].tolist() == [8, 4, 2, 1]
    assert report.iterations_to_reach(curve, "train_loss", 2.5) == 2
    assert report.iterations_to_reach(curve, "train_loss", 1.0) == 3
    assert math.isnan(report.iterations_to_reach(curve, "train_loss", 0.5))
    assert report.iterations_to_reach(curve, "train_loss", 4.0, mode="above") == 0


def test_sequential_curve_aggregates_runs_of_different_length(tmp_path: Path) -> None:
    short = _fake_run(tmp_path, "s", [100.0, 10.0], final=1.0)
    long = _fake_run(tmp_path, "l", [100.0, 100.0, 10.0, 10.0], final=10.0)
    out = report.sequential_curve({"m": [short, long]}, "train_loss", x_offset=-1, final="final_gap",
                                  transform=np.log10)
    assert out["label"].unique().tolist() == ["m"]
    row = out.set_index("iteration")
    assert row.loc[1, "mean"] == pytest.approx(1.5) and row.loc[1, "n"] == 2
    # values 0 and 1 at iteration 2: sample std (ddof=1, the one convention) is sqrt(1/2)
    assert row.loc[2, "mean"] == pytest.approx(0.5) and row.loc[2, "std"] == pytest.approx(math.sqrt(0.5))
    assert row.loc[4, "n"] == 1 and row.loc[4, "mean"] == pytest.approx(1.0)  # the short run ended at 2


def test_save_table_and_figure_write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("PASO_ARTIFACTS", str(tmp_path))
    csv, md = report.save_table(pd.DataFrame({"a": [1.0, float("nan")], "b": ["x", "y"]}), "t", {"k": (1, 2)},
                                title="T")
    assert csv == tmp_path / "tables" / "t.csv" and md.read_text().startswith("# T")
    assert json.loads((tmp_path / "tables" / "t.json").read_text())["config"] == {"k": [1, 2]}
    fig, _ = plt.subplots()
    png = report.save_figure(fig, "f", {"seed": np.int64(3)})
    plt.close(fig)
    assert png.stat().st_size > 0 and json.loads(png.with_suffix(".json").read_text())["config"] == {"seed": 3}
    with pytest.raises(ValueError, match="plain file stem"):
        report.save_table(pd.DataFrame(), "../escape")


def test_resolve_parameters_explicit_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    presets = {"default": {"dim": 10, "steps": 5}, "smoke": {"dim": 2, "steps": 1}}
    monkeypatch.delenv("PASO_SCALE", raising=False)
    assert report.resolve_parameters({"dim": None, "steps": None}, presets) == {"dim": 10, "steps": 5,
                                                                                 "scale": "default"}
    monkeypatch.setenv("PASO_SCALE", "smoke")
    assert report.resolve_parameters({"dim": 7, "steps": None}, presets) == {"dim": 7, "steps": 1, "scale": "smoke"}
    assert report.resolve_parameters({"dim": None}, presets, "default")["dim"] == 10
    with pytest.raises(ValueError, match="scale='huge'"):
        report.resolve_parameters({}, presets, "huge")


# ------------------------------------------------------------------ notebook
@pytest.mark.slow  # nbmake executes this notebook in the default suite; this run also checks its files
def test_notebook_runs_at_smoke_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    papermill = pytest.importorskip("papermill")
    nbformat = pytest.importorskip("nbformat")
    source = ROOT / "notebooks" / "optex_comparison.ipynb"
    nb = nbformat.read(source, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "scale = None" in tagged[0].source
    from papermill.translators import PythonTranslator

    names = {p.name for p in PythonTranslator.inspect(tagged[0])}  # papermill must parse every line
    assert {"functions", "dim", "steps", "nproc", "lr", "seeds", "threshold", "ema_decay", "scale"} <= names
    assert len(names) == len([line for line in tagged[0].source.splitlines() if " = None" in line])
    monkeypatch.setenv("PASO_ARTIFACTS", str(tmp_path))
    monkeypatch.setenv("PASO_SCALE", "default")  # the explicit parameter must win over the env
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(source), str(out), parameters={"scale": "smoke"}, kernel_name="python3",
                               cwd=str(ROOT / "notebooks"), progress_bar=False)
    assert (tmp_path / "figures" / "optex_comparison_gap.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "tables" / "optex_comparison.csv")
    measured = table[table.source == "measured"]
    assert measured["method"].tolist() == ["Vanilla (Adam)", "OptEx", "PASO"]
    assert np.isfinite(measured["final_gap_mean"]).all()
    assert measured["K"].tolist() == [40, 20, measured["K"].iloc[2]] and measured["K"].iloc[2] <= 40
    assert (table.source == "reported (PASO paper)").sum() == 3
    config = json.loads((tmp_path / "tables" / "optex_comparison.json").read_text())["config"]
    assert config["scale"] == "smoke" and config["dim"] == 200
    text = out.read_text()
    assert "Variant measured" in text and "Ackley vs the paper" in text
