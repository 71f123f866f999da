"""Parallel dimensions, the named device mesh, and communication per group through one meter."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from paso_core.distributed import ByteMeter, Comm
from paso_core.parallel import DimsError, ParallelDims, build_mesh


def test_coordinates_and_ranks_round_trip() -> None:
    dims = ParallelDims(pp=2, dp_replicate=2, tp=3)
    assert dims.world_size == 12 and list(dims.enabled()) == ["pp", "dp_replicate", "tp"]
    seen = set()
    for rank in range(12):
        coords = dims.coordinates(rank)
        assert dims.rank_at(**coords) == rank
        seen.add((coords["pp"], coords["dp_replicate"], coords["tp"]))
    assert len(seen) == 12
    # tensor parallel innermost (contiguous ranks), pipeline outermost
    assert [dims.coordinates(r)["tp"] for r in range(3)] == [0, 1, 2]
    assert dims.coordinates(6)["pp"] == 1 and dims.coordinates(5)["pp"] == 0


def test_logging_rank_is_the_first_rank_of_the_last_stage() -> None:
    assert ParallelDims(pp=4, dp_replicate=2).logging_rank() == 6
    assert ParallelDims(dp_replicate=4).logging_rank() == 0 == ParallelDims(window=3).logging_rank()


def test_data_parallel_coordinate_spans_replicas_and_shards() -> None:
    dims = ParallelDims(dp_replicate=2, dp_shard=2, tp=2)
    shares = {dims.data_parallel(r) for r in range(8)}
    assert shares == {(i, 4) for i in range(4)}
    assert dims.data_parallel(0) == dims.data_parallel(1)  # tp peers read the same shard


def test_degrees_that_do_not_tile_the_world_are_rejected() -> None:
    with pytest.raises(DimsError, match="pp=2 x tp=2 need 4 processes.*nproc\\*nnodes=3"):
        ParallelDims(pp=2, tp=2).check_world(3)
    with pytest.raises(DimsError, match="tp=0 is not valid"):
        ParallelDims(tp=0)
    with pytest.raises(DimsError, match="unknown mesh dimension.*'ep'"):
        ParallelDims().rank_at(ep=1)
    assert ParallelDims().mesh_shape() == ((1,), ("dp_replicate",))


def test_meter_marks_iterations() -> None:
    meter = ByteMeter(measured=10, modelled=5)
    assert meter.since_mark() == 15 and meter.since_mark() == 0
    meter.measured += 7
    assert meter.total == 22 and meter.since_mark() == 7


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(main, world: int, out_dir: Path) -> list[dict]:
    """Run ``main(rank, world, port, out_dir)`` on ``world`` gloo processes; each saves rank<r>.pt."""
    mp.start_processes(main, args=(world, _free_port(), str(out_dir)), nprocs=world, join=True,
                       start_method="spawn")
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(world)]


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _leave(record: dict, out_dir: str, rank: int) -> None:
    torch.save(record, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _mesh_main(rank: int, world: int, port: int, out_dir: str) -> None:
    _join(rank, world, port)
    dims = ParallelDims(dp_replicate=2, tp=2)
    mesh = build_mesh(dims, "cpu")
    comm = Comm(rank, world, torch.device("cpu"))
    tp, dp = comm.sub(mesh.get_group("tp"), "tp"), comm.sub(mesh.get_group("dp_replicate"), "dp_replicate")
    coords = dims.coordinates(rank)
    summed = tp.all_reduce_(torch.tensor([float(rank)]))
    # every rank sends first, then receives: blocking sends of this size could deadlock on
    # some backends; handles let both directions be in flight
    peer = dims.rank_at(dp_replicate=1 - coords["dp_replicate"], tp=coords["tp"])
    payload = torch.full((1000,), float(rank))
    inbox = torch.empty(1000)
    works = [dp.isend(payload, peer), dp.irecv(inbox, peer)]
    dp.wait(works)
    measured_p2p = comm.meter.measured
    gathered = tp.gather_objects({"rank": rank}, dst=2 * (rank // 2))  # an end-of-run merge is metered too
    _leave({"coords": coords, "mesh_names": mesh.mesh_dim_names, "tp_sum": float(summed),
            "received": float(inbox[0]), "peer": peer, "measured": measured_p2p,
            "modelled": comm.meter.modelled, "gathered": gathered,
            "object_bytes": comm.meter.measured - measured_p2p}, out_dir, rank)


def test_named_mesh_groups_and_non_blocking_point_to_point(tmp_path) -> None:
    for rank, out in enumerate(_spawn(_mesh_main, 4, tmp_path)):
        assert out["mesh_names"] == ("dp_replicate", "tp")
        tp_peers = [r for r in range(4) if r // 2 == rank // 2]
        assert out["tp_sum"] == sum(tp_peers), out  # the tp group only, not the world
        assert out["received"] == out["peer"] and out["peer"] % 2 == rank % 2
        assert out["measured"] == 1000 * 4  # counted from the tensor sent
        assert out["modelled"] == int(2 * (2 - 1) / 2 * 4)  # ring all-reduce of 4 bytes in a group of 2
        sends = rank % 2 == 1  # the tp group's second rank sends its pickle to the first
        assert out["object_bytes"] == (len(pickle.dumps({"rank": rank}, protocol=pickle.HIGHEST_PROTOCOL))
                                       if sends else 0)
        assert out["gathered"] == (None if sends else [{"rank": rank}, {"rank": rank + 1}])


def test_flat_params_copy_in_place_and_never_alias_the_model() -> None:
    from paso_core.methods.common import FlatParams

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    pointers = [p.data_ptr() for p in model.parameters()]
    flat = FlatParams(model, align_bytes=512)
    x = flat.new_vector()
    assert flat.layout.n_real == sum(p.numel() for p in model.parameters()) < x.numel()
    x.mul_(2.0)  # the model does not see the flat vector change ...
    assert not torch.equal(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), flat.layout.pack(x))
    flat.load_(x)  # ... until it is written in, in place
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), flat.layout.pack(x))
    assert [p.data_ptr() for p in model.parameters()] == pointers
    model(torch.ones(1, 3)).sum().backward()
    grad = flat.grad_into(torch.full_like(x, float("nan")))
    assert torch.equal(flat.layout.pack(grad), torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert int(grad.isnan().sum()) == x.numel() - flat.layout.n_real  # padding is never written


def _sharded_main(rank: int, world: int, port: int, out_dir: str) -> None:
    """FSDP2-sharded parameters are DTensors: the flat vector holds this rank's shards."""
    from torch.distributed.fsdp import fully_shard

    from paso_core.methods.common import FlatParams, full_model_state

    _join(rank, world, port)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 6)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    mesh = build_mesh(ParallelDims(dp_shard=world), "cpu")
    fully_shard(model, mesh=mesh["dp_shard"])
    flat = FlatParams(model)
    x = flat.new_vector()
    flat.load_(x * 3)
    state = full_model_state(model)  # collective: gathers the shards
    _leave({"numel": x.numel(), "state": state, "reference": reference}, out_dir, rank)


def test_flat_params_and_full_state_of_dtensor_parameters(tmp_path) -> None:
    for out in _spawn(_sharded_main, 2, tmp_path):
        assert out["numel"] == (4 * 6 + 6) // 2  # this rank's shards only
        for key, value in out["reference"].items():
            assert torch.equal(out["state"][key], value * 3), key


def _stages_main(rank: int, world: int, port: int, out_dir: str) -> None:
    """Two pipeline stages x two replicas: each stage keeps its blocks under full-model names."""
    import logging

    from paso_core.config import RunConfig
    from paso_core.context import WorkerContext
    from paso_core.methods.common import gather_full_state

    _join(rank, world, port)
    dims = ParallelDims(pp=2, dp_replicate=2)
    ctx = WorkerContext(cfg=RunConfig(), rank=rank, world=world, local_rank=rank, device=torch.device("cpu"),
                        comm=Comm(rank, world, torch.device("cpu")), run_dir=Path(out_dir),
                        log=logging.getLogger("stages"), dims=dims, mesh=build_mesh(dims, "cpu"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(3, 3) for _ in range(4)])
    full = {k: v.clone() for k, v in model.state_dict().items()}
    stage = ctx.coords["pp"]
    for index in range(4):
        if index // 2 != stage:
            model[index] = torch.nn.Identity()  # not this stage's block
    state = gather_full_state(ctx, model)
    _leave({"state": state, "full": full, "is_main": ctx.is_main}, out_dir, rank)


def test_end_of_run_merges_pipeline_stages_on_the_logging_rank(tmp_path) -> None:
    outs = _spawn(_stages_main, 4, tmp_path)
    assert [o["is_main"] for o in outs] == [False, False, True, False]  # first rank of the last stage
    merged, full = outs[2]["state"], outs[2]["full"]
    assert merged.keys() == full.keys() and all(torch.equal(merged[k], full[k]) for k in full)
    assert all(o["state"] is None for r, o in enumerate(outs) if r != 2)
