"""The claims map (paso_core.claims): coverage of the seeds, files that exist, artifact names the
producing code writes, and verdicts computed from small artifacts in the real format."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from paso_core import claims, report
from paso_core.experiments import cifar, optex, optex_ablation, qsr, wikitext
from paso_core.provenance import REPO
from paso_core.reproduce import SCALES
from paso_core.runs import RunResult

BY_ID = {c.id: c for c in claims.CLAIMS}


# =========================================================================== declarations
def test_every_seed_has_claims_and_ids_are_unique() -> None:
    seeds = [c.seed for c in claims.CLAIMS]
    assert set(seeds) == set(claims.SEEDS)
    assert all(seeds.count(s) >= 1 for s in claims.SEEDS)
    assert len(BY_ID) == len(claims.CLAIMS)


def test_every_notebook_and_benchmark_exists() -> None:
    for c in claims.CLAIMS:
        assert c.source.startswith(("notebooks/", "benchmarks/")), c.id
        assert (REPO / c.source).is_file(), f"{c.id}: {c.source} does not exist"
        for command in (c.run, c.paper_run or ""):
            for word in command.split():
                if word.startswith(("notebooks/", "benchmarks/")):
                    assert (REPO / word).is_file(), f"{c.id}: {word} in {command!r} does not exist"


# ---------------------------------------------------------------- what the producers write
def _module_aliases(tree: ast.Module) -> dict[str, str]:
    """``alias -> paso_core.experiments.<module>`` from a notebook's imports."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "paso_core.experiments":
            for alias in node.names:
                out[alias.asname or alias.name] = f"paso_core.experiments.{alias.name}"
    return out


def _loop_values(tree: ast.Module, call: ast.Call, name: str) -> list[str]:
    """The string constants a ``for name in (...)`` loop around ``call`` binds to ``name``."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.For) and isinstance(node.target, ast.Name) and node.target.id == name
                and any(inner is call for inner in ast.walk(node)) and isinstance(node.iter, (ast.Tuple, ast.List))):
            return [e.value for e in node.iter.elts if isinstance(e, ast.Constant)]
    raise AssertionError(f"cannot resolve artifact part {name!r}")


def _written_tables(path: Path) -> set[str]:
    """Every table stem ``report.save_table`` is given in ``path``, at every scale for notebooks."""
    tree = ast.parse(path.read_text())
    aliases = _module_aliases(tree)
    constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                 for t in n.targets if isinstance(t, ast.Name)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "save_table"):
            continue
        arg = node.args[1]
        if isinstance(arg, ast.Constant):
            names.add(arg.value)
        elif isinstance(arg, ast.Name):
            names.add(constants[arg.id])
        elif isinstance(arg, ast.Attribute):
            names.add(getattr(importlib.import_module(aliases[arg.value.id]), arg.attr))
        elif isinstance(arg, ast.Call) and getattr(arg.func, "attr", None) == "artifact_name":
            module = importlib.import_module(aliases[arg.func.value.id])
            what = arg.args[1]
            whats = [what.value] if isinstance(what, ast.Constant) else _loop_values(tree, node, what.id)
            for scale in SCALES:
                params = module.resolve_params({}, scale=scale)
                names.update(module.artifact_name(params, w) for w in whats)
        else:
            raise AssertionError(f"{path}: unrecognised table name {ast.dump(arg)}")
    return names


@pytest.fixture(scope="module")
def producible() -> set[str]:
    files = sorted((REPO / "notebooks").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
    return {f"tables/{name}.csv" for path in files for name in _written_tables(path)}


def test_every_artifact_pattern_matches_a_file_the_code_writes(producible: set[str]) -> None:
    assert "tables/cifar_paso_default_digits_cnn_P4_on2_results.csv" in producible  # the extractor works
    for c in claims.CLAIMS:
        for pattern in c.artifacts:
            hits = [name for name in producible if fnmatch.fnmatchcase(name, pattern)]
            assert hits, f"{c.id}: nothing the notebooks/benchmarks write matches {pattern}"


def test_paper_only_claims_point_at_paper_scale_files() -> None:
    for c in claims.CLAIMS:
        if c.needs and c.artifacts:
            assert all("_paper_" in p for p in c.artifacts), c.id


# =========================================================================== verdicts on fake artifacts
def _save(root: Path, name: str, df: pd.DataFrame, config: dict, gpus: list[str] | None = None) -> None:
    """A table in the real format (report.save_table: CSV + MD + JSON with the environment)."""
    report.save_table(df, name, config, root=root / "tables")
    if gpus is not None:
        side = root / "tables" / f"{name}.json"
        meta = json.loads(side.read_text())
        meta["environment"]["gpus"] = gpus
        side.write_text(json.dumps(meta))


def _verdict(claim_id: str, root: Path) -> dict:
    return claims.evaluate(BY_ID[claim_id], root)


def _seed_reference(root: Path, K: int) -> None:
    _save(root, "paso_seed_reference",
          pd.DataFrame([{"adaptivity": "mean", "T": 1000, "K_engine": K, "K_seed_reference": K,
                         "K_reference_P-1_errors": K + 10, "G_engine": 7 * K, "G_seed_reference": 7 * K,
                         "gap_engine": 0.41, "gap_seed_reference": 0.41, "gap_reference_P-1_errors": 0.41}]),
          {"P": 8, "dim": 10_000, "steps": 1000, "function": "ackley", "threshold": 1e-5, "ema_decay": 0.999})


@pytest.mark.parametrize("K, verdict", [(optex.REPORTED["paso"]["iters"], "reproduced"), (400, "differs")])
def test_optex_benchmark_iterations(tmp_path: Path, K: int, verdict: str) -> None:
    _seed_reference(tmp_path, K)
    row = _verdict("paso-optex-iters", tmp_path)
    assert row["verdict"] == verdict
    assert f"K {K} vs paper {optex.REPORTED['paso']['iters']}" in row["why"]
    assert "d=10000" in row["why"] and "P=8" in row["why"]
    assert row["scale/hardware"].startswith("benchmark; CPU only")
    assert row["artifact"] == "tables/paso_seed_reference.csv"


@pytest.mark.parametrize("offset, verdict", [(0, "reproduced"), (1000, "differs")])
def test_qsr_public_schedule_counts(tmp_path: Path, offset: int, verdict: str) -> None:
    rows = [{"schedule": name, "reported": count, "ours": count + offset, "equal": offset == 0}
            for name, (_, count) in qsr.PUBLIC_COUNTS.items()]
    _save(tmp_path, "qsr_default_digits_public_vit_counts", pd.DataFrame(rows), {"notebook": "qsr_local_sgd"})
    row = _verdict("qsr-counts", tmp_path)
    assert row["verdict"] == verdict
    assert row["scale/hardware"].startswith("default; ")  # the scale read from the file name


def _table2(root: Path, paso_ppl: float, *, scale: str = "default", gpus: list[str] | None = None,
            paso_wall: float = 0.5) -> None:
    label = wikitext.METHOD_LABELS
    rows = [{"method": label["serial"], "source": wikitext.MEASURED, "PPL": 100.0, "iterations": 200, "steps": 200,
             "speed-up (wall time)": 1.0},
            {"method": label["paso"], "source": wikitext.MEASURED, "PPL": paso_ppl, "iterations": 50, "steps": 200,
             "speed-up (wall time)": paso_wall},
            {"method": label["naive_dp"], "source": wikitext.MEASURED, "PPL": 100.0, "iterations": 200, "steps": 200,
             "speed-up (wall time)": 0.4},
            {"method": label["ddp"], "source": wikitext.MEASURED, "PPL": 100.0, "iterations": 200, "steps": 200,
             "speed-up (wall time)": 0.6},
            {"method": label["paso"], "source": wikitext.REPORTED, "PPL": 20.5, "iterations": 160, "steps": None,
             "speed-up (wall time)": 4.2}]
    params = {"scale": scale, "P": 4, "model": "gpt2-tiny", "dataset": "pydoc", "steps": 200}
    _save(root, f"wikitext_paso_{scale}_pydoc_gpt2-tiny_P4_on2_table2", pd.DataFrame(rows), {"params": params}, gpus)


@pytest.mark.parametrize("ppl, verdict", [(100.4, "reproduced"), (150.0, "differs")])
def test_table2_perplexity(tmp_path: Path, ppl: float, verdict: str) -> None:
    _table2(tmp_path, ppl)
    row = _verdict("paso-t2-ppl", tmp_path)
    assert row["verdict"] == verdict
    assert f"PPL {ppl:.1f} vs 100.0" == row["ours"]
    assert "not WikiText-2" in row["why"]


def test_table2_iterations_compare_the_fraction_of_P(tmp_path: Path) -> None:
    _table2(tmp_path, 100.0)  # T/K = 200/50 = 4 at P=4: 100% of P vs the paper's 6.25/7 = 89%
    row = _verdict("paso-t2-iters", tmp_path)
    assert row["verdict"] == "reproduced" and "T/K 4.00 at P=4 (100% of P)" in row["why"]


def test_wall_clock_is_not_comparable_on_cpu_and_judged_on_gpus(tmp_path: Path) -> None:
    _table2(tmp_path, 100.0, paso_wall=4.1)
    row = _verdict("paso-t2-wall", tmp_path)
    assert row["verdict"] == "not comparable here" and "CPU" in row["why"]
    assert "GPU run: papermill notebooks/wikitext_paso.ipynb" in row["why"]
    gpu = tmp_path / "gpu"
    _table2(gpu, 100.0, scale="paper", gpus=["NVIDIA A100"] * 8, paso_wall=4.1)
    row = _verdict("paso-t2-wall", gpu)
    assert row["verdict"] == "reproduced", row
    assert row["scale/hardware"].startswith("paper; 8x NVIDIA A100")
    _table2(gpu, 100.0, scale="paper", gpus=["NVIDIA A100"] * 8, paso_wall=1.0)
    assert _verdict("paso-t2-wall", gpu)["verdict"] == "differs"


def _cifar(root: Path, P: int, paso_acc: float, nproc: int) -> None:
    rows = [{"method": cifar.METHOD_LABELS["serial"], "seeds": 3, "test_accuracy_mean": 0.97, "test_accuracy_std": 0.01},
            {"method": cifar.METHOD_LABELS["paso"], "seeds": 3, "test_accuracy_mean": paso_acc,
             "test_accuracy_std": 0.01}]
    params = {"scale": "default", "P": P, "dataset": "digits", "model": "cnn", "steps": 300, "nproc": 2,
              "paso_nproc": nproc}
    _save(root, cifar.artifact_name(params, "results"), pd.DataFrame(rows), {"params": params})


@pytest.mark.parametrize("acc, verdict", [(0.968, "reproduced"), (0.80, "differs")])
def test_cifar_accuracy_prefers_the_papers_window_size(tmp_path: Path, acc: float, verdict: str) -> None:
    _cifar(tmp_path, 4, 0.50, 2)  # a P=4 file that would give another verdict is ignored
    _cifar(tmp_path, 7, acc, 1)
    row = _verdict("paso-cifar-acc", tmp_path)
    assert row["verdict"] == verdict
    assert "P=7" in row["why"] and "not CIFAR-10" in row["why"]
    assert row["artifact"] == "tables/cifar_paso_default_digits_cnn_P7_on1_results.csv"


@pytest.mark.parametrize("speedup, verdict", [(optex.REPORTED["optex"]["speedup"] / 2, "reproduced"), (4.0, "differs")])
def test_optex_speedup_per_worker(tmp_path: Path, speedup: float, verdict: str) -> None:
    rows = [{"function": "ackley", "method": label, "source": optex.MEASURED_SOURCE, "speed-up": s, "K": 300 / s,
             "final_gap_mean": 2.0} for label, s in zip(optex.METHOD_LABELS.values(), (1.0, speedup, 2.5))]
    _save(tmp_path, optex.TABLE_NAME, pd.DataFrame(rows),
          {"scale": "default", "dim": 2000, "steps": 300, "nproc": 4, "seeds": [0, 1], "functions": ["ackley"]})
    assert _verdict("optex-speedup", tmp_path)["verdict"] == verdict  # N=4 here: half the paper's 8


@pytest.mark.parametrize("gap, verdict", [(2.3, "reproduced (as log10)"), (0.41, "reproduced"), (1.0, "differs")])
def test_optex_gap_is_judged_directly_and_as_a_log10(tmp_path: Path, gap: float, verdict: str) -> None:
    params = optex_ablation.resolve_params({}, "default")
    runs = [RunResult(Path("/fake"), {"final_gap": gap}, pd.DataFrame(), {"seed": 0})]
    check = optex_ablation.log10_check({("log10_check", "ackley"): {"vanilla": runs}}, params)
    _save(tmp_path, optex_ablation.LOG10_NAME, check, params)
    _seed_reference(tmp_path, 90)
    rows = [{"function": "ackley", "method": label, "source": optex.MEASURED_SOURCE, "final_gap_mean": 2.0}
            for label in optex.METHOD_LABELS.values()]
    _save(tmp_path, optex.TABLE_NAME, pd.DataFrame(rows), {"scale": "default", "dim": 2000, "steps": 300, "nproc": 4})
    row = _verdict("optex-gap", tmp_path)
    assert row["verdict"] == verdict
    assert f"its log10 {math.log10(gap):.3f}" in row["why"] and "d=10000, T=1000" in row["why"]


@pytest.mark.parametrize("stale_dex, verdict", [(0.0, "differs"), (0.5, "reproduced")])
def test_optex_estimate_is_judged_at_the_benchmark_setting(tmp_path: Path, stale_dex: float, verdict: str) -> None:
    def row(setting: str, stale: float, matters: str) -> dict:
        return {"setting": setting, "function": "ackley", "estimate matters": matters, "gp_dex": 0.0, "stale_dex": stale}

    table = pd.DataFrame([row("adam_paper_lr", stale_dex, "yes" if stale_dex else "no"),
                          row("adam_10x_lr", 4.3, "yes"), row("sgd", 0.0, "marginally")])
    _save(tmp_path, optex_ablation.VERDICT_NAME, table, optex_ablation.resolve_params({}, "default"))
    out = _verdict("optex-estimate", tmp_path)
    assert out["verdict"] == verdict and out["ours"] == f"ackley: stale - GP {stale_dex:+.3f} dex"
    assert "adam_10x_lr ackley (stale - GP 4.30 dex)" in out["why"]
    assert "sgd ackley (marginally: stale - GP 0.00 dex)" in out["why"] and "d=2000, T=300, N=4" in out["why"]


# =========================================================================== missing and broken
def test_missing_artifacts_give_rows_with_the_command(tmp_path: Path) -> None:
    table = claims.claims_table(tmp_path)
    assert len(table) == len(claims.CLAIMS)
    for c, (_, row) in zip(claims.CLAIMS, table.iterrows()):
        if c.needs:
            assert row["verdict"] == "not run here", c.id
            assert "needs" in row["why"]
        else:
            assert row["verdict"] == f"missing (run: {c.run})", c.id
            assert row["command"] == c.run
    assert "missing (run: python -m paso_core.reproduce --scale default --only cifar_paso)" in set(table["verdict"])


def test_an_unreadable_artifact_is_a_row_not_a_crash(tmp_path: Path) -> None:
    _save(tmp_path, "paso_seed_reference", pd.DataFrame([{"something": 1}]), {})
    row = _verdict("paso-optex-iters", tmp_path)
    assert row["verdict"].startswith("unreadable") and "rerun:" in row["why"]


def test_markdown_has_at_most_ten_columns(tmp_path: Path) -> None:
    _seed_reference(tmp_path, 86)
    text = claims.claims_markdown(tmp_path)
    header = text.splitlines()[0]
    assert header.count("|") - 1 <= 10
    assert len(text.splitlines()) == len(claims.CLAIMS) + 2
    assert all(line.count("|") - line.count("\\|") == header.count("|") for line in text.splitlines())


@pytest.mark.skipif(not (REPO / "artifacts" / "tables").is_dir(), reason="no artifacts in this checkout")
def test_the_shipped_artifacts_answer_every_claim_that_does_not_need_gpus() -> None:
    table = claims.claims_table(REPO / "artifacts")
    bad = table[table["verdict"].str.startswith(("missing", "unreadable"))]
    assert bad.empty, bad[["id", "verdict", "why"]].to_string()


@pytest.mark.parametrize("per_rank, verdict", [(9_950.0, "reproduced"), (4_000.0, "differs")])
def test_seed002_throughput_is_judged_only_on_gpus_with_gpt2(tmp_path: Path, per_rank: float, verdict: str) -> None:
    rows = pd.DataFrame([{"method": "serial", "world": 1, "tokens_per_s_per_rank": 10_000.0},
                         {"method": "naive_dp", "world": 2, "tokens_per_s_per_rank": per_rank}])
    _save(tmp_path, "parallel_strategies_default_gpt2_methods", rows, {"params": {"scale": "default", "model": "gpt2"}},
          gpus=["NVIDIA RTX 4090D"] * 2)
    assert _verdict("dp-per-rank", tmp_path)["verdict"] == verdict
    cpu = tmp_path / "cpu"
    _save(cpu, "parallel_strategies_default_gpt2_methods", rows, {"params": {"scale": "default", "model": "gpt2"}})
    assert _verdict("dp-per-rank", cpu)["verdict"] == "not comparable here"
