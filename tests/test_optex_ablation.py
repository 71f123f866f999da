"""The OptEx proxy ablation's logic without processes: parameters and plan, the table's
gap-in-dex and speed-up, the verdicts (which proxy is which), the log10 reading of the
paper's gap, and the figure. The notebook itself runs at smoke scale under nbmake."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import pytest

from paso_core.config import ConfigError
from paso_core.experiments import optex_ablation as ablation
from paso_core.methods.optex import OFFICIAL_JAX
from paso_core.runs import RunResult

matplotlib.use("Agg")


def _run(method: str, seed: int, losses: list[float], final: float, cosine: float = float("nan"),
         **config: Any) -> RunResult:
    rows = [{"iteration": k, "steps_done": k, "train_loss": v} for k, v in enumerate(losses, 1)]
    summary = {"status": "completed", "final_gap": final, "iterations": len(losses), "grad_est_cosine_mean": cosine}
    return RunResult(Path(f"/fake/{method}{seed}"), summary, pd.DataFrame(rows),
                     {"method": method, "seed": seed, **config})


# =========================================================================== parameters and plan
def test_default_plan_covers_the_grid_and_the_log10_check() -> None:
    plan = ablation.prepare({}, "default")
    p = plan.params
    grid = len(p["settings"]) * len(p["functions"]) * len(p["seeds"]) * len(p["variants"])
    assert len(plan.runs) == grid + len(p["check_seeds"])
    check = [r for r in plan.runs if r.setting == "log10_check"]
    assert {(r.config.dim, r.config.steps, r.config.method, r.config.lr) for r in check} == {(10_000, 1000, "serial", 1e-3)}
    jax = next(r.config.to_dict() for r in plan.runs if r.variant == "gp_official_jax")
    assert {k: jax[k] for k in OFFICIAL_JAX} == OFFICIAL_JAX and jax["proxy"] == "gp"
    sgd_ackley = next(r.config for r in plan.runs if r.setting == "sgd" and r.function == "ackley")
    assert (sgd_ackley.optimizer, sgd_ackley.lr) == ("sgd", ablation.SETTINGS["sgd"]["lr"]["ackley"])
    vanilla = next(r.config for r in plan.runs if r.variant == "vanilla")
    assert vanilla.method == "serial" and vanilla.world_size == 1


def test_the_gp_variant_is_the_comparison_notebooks_optex_run() -> None:
    """Same options as optex_comparison's OptEx run, so a reproduce-all reuses it."""
    from paso_core.experiments import optex

    ours = ablation.run_options(ablation.resolve_params({}, "default"), "adam_paper_lr", "ackley", "gp", 0)
    theirs = optex.run_options(optex.resolve_params({}, "default"), "ackley", "optex", 0)
    assert {**ours, "proxy": None} == {**theirs, "proxy": None}


@pytest.mark.parametrize("values,match", [
    ({"settings": "adam,sgd"}, "settings='adam,sgd' is not valid; choose from: adam_paper_lr, adam_10x_lr, sgd"),
    ({"variants": ["gp", "stale"]}, "must include 'vanilla'"),
    ({"functions": "beale"}, "functions='beale' is not valid"),
    ({"check_seeds": [1, 1]}, "check_seeds=\\[1, 1\\] repeats a seed"),
    ({"reach_rtol": 2}, "reach_rtol=2 is not valid"),
    ({"bogus": 1}, "unknown parameter\\(s\\) \\['bogus'\\]"),
    ({"nproc": 3, "steps": 2}, "P=3 is larger than steps=2"),
])
def test_bad_parameters_fail_before_any_run(values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ablation.prepare(values, "smoke")


# =========================================================================== table and verdicts
def _results() -> ablation.Results:
    """Sphere, two seeds: vanilla reaches 1e-2 at its 4th row; GP matches it in 2
    iterations; stale stalls at 1.0 (2 dex higher); zero diverges on seed 1."""
    def variant(method: str, gaps: list[float], finals: list[float], cosine: float = float("nan")) -> list[RunResult]:
        return [_run(method, s, gaps, f, cosine) for s, f in enumerate(finals)]

    by_variant = {
        "vanilla": variant("serial", [100.0, 10.0, 1.0, 0.1], [1e-2, 1e-2]),
        "gp": variant("optex", [100.0, 0.1], [1e-2, 1e-2], cosine=1e-3),
        "stale": variant("optex", [100.0, 10.0], [1.0, 1.0], cosine=0.05),
        "zero": [_run("optex", 0, [100.0, 50.0], 10.0, 1.0), _run("optex", 1, [100.0, 50.0], float("nan"), 1.0)],
    }
    return {("adam_10x_lr", "sphere"): by_variant}


def test_table_gap_in_dex_speed_up_and_reached() -> None:
    params = {**ablation.resolve_params({}, "smoke"), "reach_rtol": 0.0}
    table = ablation.ablation_table(_results(), params).set_index("key")
    assert table.loc["vanilla", "gap vs vanilla [dex]"] == 0 and table.loc["vanilla", "speed-up"] == 1
    assert table.loc["gp", "speed-up"] == 2 and table.loc["gp", "reached"] == "2/2"  # final gap after 2 iterations
    assert table.loc["stale", "gap vs vanilla [dex]"] == pytest.approx(2.0) and table.loc["stale", "reached"] == "0/2"
    assert math.isnan(table.loc["stale", "speed-up"])
    assert table.loc["zero", "final gap"] == "10 (1/2)"  # the diverged seed is counted, not averaged
    assert table.loc["gp", "proxy cosine distance"] == pytest.approx(1e-3)
    assert math.isnan(table.loc["vanilla", "proxy cosine distance"])
    assert set(ablation.MD_COLUMNS) <= set(table.reset_index().columns)


def test_verdicts_say_which_proxy_is_which() -> None:
    params = {**ablation.resolve_params({}, "smoke"), "reach_rtol": 0.0}
    verdict = ablation.verdicts(ablation.ablation_table(_results(), params)).iloc[0]
    assert verdict["estimate matters"] == "yes"
    assert verdict["GP vs stale"] == "GP lower than stale by 2.00 dex (100x)"
    assert verdict["GP vs zero"] == "GP lower than zero by 3.00 dex (1e+03x)"
    assert verdict["ours vs official JAX"] == "official JAX did not finish with a finite gap"  # not run here
    assert verdict["reached vanilla's gap"] == "gp 2/2, stale 0/2, zero 0/2, gp_official_jax 0/2"
    text = ablation.summary_text(ablation.verdicts(ablation.ablation_table(_results(), params)))
    assert "**Adam, 10x lr** — on sphere the GP estimate ends lower" in text and "1/1 (setting, function)" in text


@pytest.mark.parametrize("gp,stale,gp_hit,stale_hit,expected", [
    (0.0, 0.0, 1, 1, "no"), (0.0, 0.005, 1, 1, "no"), (0.0, 0.02, 1, 1, "yes"), (0.02, 0.0, 1, 1, "no"),
    (0.0, 0.005, 2, 1, "marginally"), (0.0, float("nan"), 0, 0, "yes"), (float("nan"), 0.0, 0, 1, "no"),
])
def test_estimate_matters_only_when_the_gp_ends_lower(gp: float, stale: float, gp_hit: int, stale_hit: int,
                                                      expected: str) -> None:
    assert ablation.estimate_matters(gp, stale, gp_hit, stale_hit) == expected


def test_compare_within_same_dex_is_the_same() -> None:
    assert ablation.compare(0.1, 0.1 + ablation.SAME_DEX / 2, "a", "b").startswith("a = b")
    assert ablation.compare(0.5, 0.0, "a", "b") == "b lower than a by 0.50 dex (3.16x)"
    assert ablation.log_gap(0.0) == math.log10(ablation.GAP_FLOOR) and math.isnan(ablation.log_gap(float("nan")))


# =========================================================================== the log10 check
@pytest.mark.parametrize("gaps,closer", [([2.3, 2.4], "log10 of the gap"), ([0.41, 0.42], "the gap itself")])
def test_log10_check_picks_the_closer_reading(gaps: list[float], closer: str) -> None:
    params = ablation.resolve_params({}, "default")
    runs = [_run("serial", s, [3.0], g) for s, g in enumerate(gaps)]
    check = ablation.log10_check({("log10_check", "ackley"): {"vanilla": runs}}, params).iloc[0]
    assert check["closer reading"] == closer and check["seeds"] == 2
    assert check["log10 of it"] == pytest.approx(sum(math.log10(g) for g in gaps) / 2)
    assert check["gap minus paper"] == pytest.approx(sum(gaps) / 2 - 0.40)
    assert "d=10000, T=1000" in check["setting"]
    text = ablation.log10_text(pd.DataFrame([check]))
    assert f"reads as the {closer}" in text


def test_figure_has_a_panel_per_setting_and_function() -> None:
    import matplotlib.pyplot as plt

    params = ablation.resolve_params({}, "smoke")
    params["settings"], params["functions"] = ["adam_10x_lr"], ["sphere"]
    fig = ablation.plot_ablation(_results(), params)
    (ax,) = fig.axes
    assert ax.get_title() == "Adam, 10x lr: sphere (lr 0.01)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]  # seeds per curve vary: n in the legend
    assert legend == [f"{ablation.VARIANT_LABELS[k]} (n={n})" for k, n in
                      (("vanilla", "2"), ("gp", "2"), ("stale", "2"), ("zero", "1–2"))]
    plt.close(fig)


def test_run_all_matches_results_to_the_plan_by_position() -> None:
    plan = ablation.prepare({}, "smoke")

    def runner(cfg: Any) -> RunResult:
        run = _run(cfg.method, cfg.seed, [2.0, 1.0], 0.5)
        run.config = cfg.to_dict()
        return run

    results = ablation.run_all(plan, log=lambda _: None, runner=runner)
    assert list(results) == [("adam_paper_lr", "ackley"), ("log10_check", "ackley")]
    assert list(results[("adam_paper_lr", "ackley")]) == list(ablation.VARIANTS)
    assert results[("adam_paper_lr", "ackley")]["stale"][0].config["proxy"] == "stale"


# =========================================================================== the comparison's fidelity option
def test_comparison_notebook_offers_the_official_jax_settings() -> None:
    from paso_core.experiments import optex

    params = optex.resolve_params({"optex_variant": "official_jax"}, "smoke")
    opts = optex.run_options(params, "ackley", "optex", 0)
    assert {k: opts[k] for k in OFFICIAL_JAX} == OFFICIAL_JAX
    assert "history" not in optex.run_options(params, "ackley", "paso", 0)  # PASO does not take OptEx's options
    assert "history" not in optex.run_options(params, "ackley", "serial", 0)
    text = optex.comparison(pd.DataFrame(columns=["function", "source"]), pd.DataFrame(), params)
    assert "the official JAX code's settings: T0=50, fixed length scale 0.1" in text
    with pytest.raises(ConfigError, match="history=30 cannot be combined with optex_variant='official_jax'"):
        optex.resolve_params({"optex_variant": "official_jax", "history": 30}, "smoke")
    with pytest.raises(ConfigError, match="optex_variant='jax' is not valid; choose one of: project, official_jax"):
        optex.resolve_params({"optex_variant": "jax"}, "smoke")
