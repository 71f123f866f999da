"""Several nodes: two torchrun agents on one machine stand in for two nodes joined by the
rendezvous, and must give the run one node with the same world size gives.

Why on one machine: the launcher, torchrun's rendezvous and the workers' rank arithmetic
are what multi-node adds, and they are the same on localhost; the two nodes also share a
filesystem here, as they often do on a cluster, so neither may clear the other's directory.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import paso_core
from paso_core.config import ConfigError, RunConfig, validate
from paso_core.launch import launch_all, torchrun_command
from paso_core.runs import RunResult, run_dir_for

#: Workers per node: one keeps the file under 30 s on a 2-core machine; node_rank still decides
#: which global rank each node's worker gets, and which node writes the results.
PER_NODE = 1
PROCESSES = dict(progress=False, threads_per_worker=1, stall_timeout_s=120, collective_timeout_s=60)
PASO = dict(method="paso", task="synthetic", function="ackley", dim=64, P=4, steps=10, **PROCESSES)
DDP = dict(method="ddp", task="vision", dataset="digits", model="cnn", batch_size=16, steps=4,
           eval_batch_size=256, **PROCESSES)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _configs(options: list[dict[str, Any]], out_dirs: list[Path], **processes: Any) -> list[RunConfig]:
    return [RunConfig.from_dict({**o, **processes, "out_dir": str(d)}) for o, d in zip(options, out_dirs)]


def _two_nodes(options: list[dict[str, Any]], out_dirs: list[Path]) -> dict[int, list[RunResult]]:
    """Each node's launch of ``options`` (one launch per node, both runs in it), run at once.

    Both nodes get the same ``out_dir``s, as nodes sharing a filesystem would.
    """
    endpoint = f"127.0.0.1:{_free_port()}"
    results: dict[int, list[RunResult]] = {}
    errors: dict[int, BaseException] = {}

    def node(rank: int) -> None:
        try:
            cfgs = _configs(options, out_dirs, nproc=PER_NODE, nnodes=2, node_rank=rank, rdzv_endpoint=endpoint)
            results[rank] = launch_all(cfgs)
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            errors[rank] = err

    threads = [threading.Thread(target=node, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise next(iter(errors.values()))
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """PASO and DDP on two nodes, and on one node with as many workers as both."""
    root = tmp_path_factory.mktemp("multinode")
    options = [PASO, DDP]
    nodes = _two_nodes(options, [root / "paso", root / "ddp"])
    single = launch_all(_configs(options, [root / "one-paso", root / "one-ddp"], nproc=2 * PER_NODE))
    return {"root": root, "nodes": nodes, "single": dict(zip(("paso", "ddp"), single)),
            "multi": dict(zip(("paso", "ddp"), nodes[0]))}


def _computed(result: RunResult) -> pd.DataFrame:
    """The metrics without seconds (``*_s``) and memory (``*_mb``): they measure the machine, not the computation."""
    measured = [c for c in result.metrics if c.endswith(("_s", "_mb"))]
    return result.metrics.drop(columns=measured).reset_index(drop=True)


@pytest.mark.parametrize("method", ["paso", "ddp"])
def test_two_nodes_give_the_single_node_run(runs: dict[str, Any], method: str) -> None:
    multi, single = runs["multi"][method], runs["single"][method]
    assert multi.summary["status"] == single.summary["status"] == "completed"
    assert multi.summary["world_size"] == single.summary["world_size"] == 2 * PER_NODE
    assert len(multi.metrics) and (multi.metrics["kind"] == "train").sum() > 0
    # every loss, counter and evaluation, bitwise: same ranks, same collectives
    pd.testing.assert_frame_equal(_computed(multi), _computed(single), check_exact=True)
    for key in ("steps", "iterations", "grad_evals", "final_train_loss"):
        assert multi.summary.get(key) == single.summary.get(key), key
    final_multi = torch.load(multi.path / "final.pt", weights_only=True)
    final_single = torch.load(single.path / "final.pt", weights_only=True)
    assert final_multi.keys() == final_single.keys()
    for name in final_multi:
        assert torch.equal(final_multi[name], final_single[name]), name


def test_paso_solves_the_window_in_fewer_iterations_than_steps(runs: dict[str, Any]) -> None:
    summary = runs["multi"]["paso"].summary
    assert summary["steps"] == 10 and 0 < summary["iterations"] < 10


@pytest.mark.parametrize("method", ["paso", "ddp"])
def test_node_rank_decides_where_ranks_and_results_land(runs: dict[str, Any], method: str) -> None:
    """node_rank=0 holds the first ranks and the results; node 1 writes beside it, never into it."""
    root = runs["root"]
    node0, node1 = root / method, root / f"{method}.node1"
    index = ["paso", "ddp"].index(method)
    assert [runs["nodes"][rank][index].path for rank in (0, 1)] == [node0, node1]
    assert {"summary.json", "metrics.csv", "final.pt", "config.json"} <= {p.name for p in node0.iterdir()}
    ranks = {node: list(range(node * PER_NODE, (node + 1) * PER_NODE)) for node in (0, 1)}
    assert sorted(p.name for p in (node0 / "logs").glob("rank*.log")) == [f"rank{r}.log" for r in ranks[0]]
    assert sorted(p.name for p in (node1 / "logs").glob("rank*.log")) == [f"rank{r}.log" for r in ranks[1]]
    assert not (node1 / "final.pt").exists() and not (node1 / "metrics.csv").exists()
    pointer = paso_core.load_run(node1).summary
    assert pointer["status"] == "completed" and pointer["results_node_rank"] == 0
    assert pointer["ranks_on_this_node"] == ranks[1] and pointer["node_rank"] == 1
    assert paso_core.load_run(node0).config["node_rank"] == 0 and paso_core.load_run(node1).config["node_rank"] == 1


# ------------------------------------------------------------------ before any process starts
def test_nodes_share_every_torchrun_argument_but_their_rank() -> None:
    """Agents passing different rendezvous ids never meet: the id may not depend on the node."""
    commands = []
    for rank in (0, 1):
        cfg = validate(RunConfig.from_dict(dict(PASO, nproc=2, nnodes=2, node_rank=rank,
                                                rdzv_endpoint="node0:29400")))
        commands.append(torchrun_command(cfg, run_dir_for(cfg) / "config.json"))
    assert len(commands[0]) == len(commands[1])
    differ = [(a, b) for a, b in zip(*commands) if a != b]
    assert differ[0] == ("--node-rank=0", "--node-rank=1")
    assert len(differ) == 2 and differ[1][1] == differ[1][0].replace("/config.json", ".node1/config.json")
    assert "--rdzv-backend=static" in commands[0]  # the backend that honours --node-rank


def test_default_run_directories_of_the_nodes_pair_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASO_ARTIFACTS", str(tmp_path))
    dirs = [run_dir_for(RunConfig.from_dict(dict(PASO, nnodes=2, node_rank=rank, rdzv_endpoint="h:1")))
            for rank in (0, 1)]
    assert dirs[1] == dirs[0].with_name(dirs[0].name + ".node1")
    assert run_dir_for(RunConfig.from_dict(dict(PASO, out_dir="x/run", node_rank=1))) == Path("x/run.node1").resolve()
    assert run_dir_for(RunConfig.from_dict(dict(PASO, out_dir=".", node_rank=1))) == Path.cwd().with_name(
        Path.cwd().name + ".node1")
    assert run_dir_for(RunConfig.from_dict(dict(PASO, out_dir="x/run"))) == Path("x/run")


@pytest.mark.parametrize("method,options,results_node", [
    ("paso", dict(P=4), 0),
    ("pp", dict(task="vision", batch_size=16), 1),  # the last stage logs: its loss exists there
])
def test_other_nodes_say_which_node_holds_the_results(tmp_path: Path, method: str, options: dict,
                                                      results_node: int) -> None:
    from paso_core.launch import _point_to_results_node

    for rank in (0, 1):
        cfg = validate(RunConfig.from_dict(dict(method=method, steps=4, nproc=1, nnodes=2, node_rank=rank,
                                                rdzv_endpoint="h:29400", **options)))
        (tmp_path / str(rank)).mkdir()
        _point_to_results_node(cfg, tmp_path / str(rank))
        summary = paso_core.load_run(tmp_path / str(rank)).summary
        assert summary["results_node_rank"] == results_node and summary["ranks_on_this_node"] == [rank]


BAD_NODES = [
    ({"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "h:29400"}, "node_rank=2 is not valid with nnodes=2.*0..1"),
    ({"node_rank": 1}, "node_rank=1 is not valid with nnodes=1"),
    ({"nnodes": 2, "node_rank": -1, "rdzv_endpoint": "h:29400"}, "node_rank=-1 is not valid.*>= 0"),
    ({"nnodes": 2, "node_rank": "1", "rdzv_endpoint": "h:29400"}, "node_rank='1' is not valid"),
    ({"nnodes": 2, "rdzv_endpoint": "node0"}, "rdzv_endpoint='node0' is not valid; give 'host:port'"),
    ({"nnodes": 2, "rdzv_endpoint": "node0:"}, "rdzv_endpoint='node0:' is not valid"),
    ({"nnodes": 2, "rdzv_endpoint": ":29400"}, "rdzv_endpoint=':29400' is not valid"),
    ({"nnodes": 2, "rdzv_endpoint": "node0:http"}, "rdzv_endpoint='node0:http' is not valid"),
    ({"nnodes": 2, "rdzv_endpoint": "node0:70000"}, "rdzv_endpoint='node0:70000' is not valid.*1..65535"),
    ({"nnodes": 2, "rdzv_endpoint": "node0:0"}, "rdzv_endpoint='node0:0' is not valid"),
    ({"nnodes": 2, "rdzv_endpoint": "fd00::1:29400"}, "rdzv_endpoint='fd00::1:29400' is not valid.*\\[fd00::1\\]"),
    ({"nnodes": 2, "rdzv_endpoint": "node0:29400 "}, "rdzv_endpoint='node0:29400 ' is not valid"),
]


@pytest.mark.parametrize("options,message", BAD_NODES, ids=[str(o) for o, _ in BAD_NODES])
def test_bad_multinode_input_is_rejected_before_launch(options: dict, message: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("validation must happen before any process starts")

    monkeypatch.setattr("subprocess.Popen", no_process)
    with pytest.raises(ConfigError, match=message):
        paso_core.run(**{"method": "paso", "task": "synthetic", "P": 4, "nproc": 2, "steps": 10, **options})


@pytest.mark.parametrize("endpoint", ["node0:29400", "10.0.0.1:1", "[fd00::1]:29400", "node-0.cluster:65535"])
def test_good_endpoints_pass(endpoint: str) -> None:
    validate(RunConfig.from_dict(dict(PASO, nproc=2, nnodes=2, node_rank=1, rdzv_endpoint=endpoint)))


def test_cli_flags_reach_the_same_config() -> None:
    """``python -m paso_core run ... --nnodes 2 --node-rank 1 --rdzv-endpoint host:port`` on each node."""
    from paso_core.__main__ import build_parser

    args = vars(build_parser().parse_args(["run", "--method", "paso", "--P", "4", "--nproc", "1", "--nnodes", "2",
                                           "--node-rank", "1", "--rdzv-endpoint", "node0:29400"]))
    del args["command"], args["json"]
    cfg = validate(RunConfig.from_dict(args))
    assert (cfg.nnodes, cfg.node_rank, cfg.rdzv_endpoint, cfg.world_size) == (2, 1, "node0:29400", 2)
