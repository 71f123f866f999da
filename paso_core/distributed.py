"""Process-group and device helpers: gloo on CPU, NCCL on CUDA, and byte accounting.

Every message a method sends goes through :class:`Comm` (one per process group, all sharing
one :class:`ByteMeter`), so the bytes each rank sends are counted the same way for every
method and can be compared side by side.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .config import ConfigError, RunConfig


def uses_cuda(cfg: RunConfig) -> bool:
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def check_devices(cfg: RunConfig) -> None:
    """Reject, before any process starts, a CUDA run with more local workers than GPUs.

    Each rank needs a GPU of its own: two ranks on one GPU make NCCL abort ("Duplicate GPU
    detected") only after every worker has started, far from the option that caused it.
    """
    if cfg.device == "cpu":
        return
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device='cuda' was asked for but torch.cuda.is_available() is False (no visible GPU, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch built with "
            f"CUDA {torch.version.cuda}); use device='cpu' or device='auto'")
    if not uses_cuda(cfg):
        return
    gpus, nproc = torch.cuda.device_count(), cfg.nproc or 1
    if nproc > gpus:
        raise ConfigError(
            f"nproc={nproc} local workers need one GPU each, but this node has "
            f"torch.cuda.device_count()={gpus} (two ranks on one GPU make NCCL abort with "
            f"'Duplicate GPU detected'). Use device='cpu', or fewer workers per node "
            f"(nproc <= {gpus}; for paso/optex P = nproc*nnodes, so a smaller P or more nodes). "
            f"Several window positions per rank (positions_per_rank, PASO on any number of "
            f"devices) is planned but not available yet")


def pick_device(cfg: RunConfig, local_rank: int) -> torch.device:
    """CUDA (GPU ``local_rank``, one GPU per local rank) when available and allowed, else CPU.

    Never wraps around (``local_rank % count``): sharing a GPU makes NCCL abort; the
    launcher's :func:`check_devices` rejects such runs earlier, this is the backstop.
    """
    if uses_cuda(cfg):
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for but torch.cuda.is_available() is False")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise RuntimeError(f"local rank {local_rank} has no GPU of its own: only {count} visible "
                               f"(one GPU per rank; use device='cpu' or at most {count} workers per node)")
        torch.cuda.set_device(local_rank)
        exact_cuda_kernels()
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def exact_cuda_kernels() -> None:
    """Deterministic cuDNN and full-float32 matmuls/convolutions on CUDA.

    Why: PASO's exactness (threshold 0 equals serial bit for bit) and every engine-vs-serial
    comparison need the same inputs to give the same bits; cuDNN's autotuner and TF32 (on by
    default for convolutions on Ampere and later) break both."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(cfg: RunConfig, device: torch.device) -> None:
    """Join the group torchrun set up; the timeout turns a stalled collective into an error."""
    timeout = datetime.timedelta(seconds=cfg.collective_timeout_s)
    kwargs: dict[str, Any] = {"backend": backend_for(device), "timeout": timeout}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)


def set_threads(cfg: RunConfig, local_world: int) -> int:
    """Share the CPU cores among the local workers (oversubscription makes runs crawl)."""
    threads = cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(threads)
    return threads


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak device memory (CUDA allocator) and peak resident set size of this process."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss_kb / (1024 * 1024) if sys.platform == "darwin" else rss_kb / 1024
    out = {"peak_rss_mb": rss_mb}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


@dataclass
class ByteMeter:
    """Bytes this rank sent and seconds it spent communicating, shared by all its groups.

    Every byte figure says where it comes from: ``measured`` bytes are counted from the
    tensors a rank handed to point-to-point sends; ``modelled`` bytes come from a formula
    for a collective whose internal traffic the backend decides (ring all-reduce, tree
    broadcast), such as DDP's bucketed all-reduce inside backward.
    """

    measured: int = 0
    modelled: int = 0
    seconds: float = 0.0
    delay_s: float = 0.0  # test hook (inject_fault kind 'slow_comm'): added to every timed call
    _at_mark: int = 0

    @property
    def total(self) -> int:
        return self.measured + self.modelled

    def since_mark(self) -> int:
        """Bytes sent since the previous call (one iteration's traffic, when called once per iteration)."""
        total = self.total
        delta, self._at_mark = total - self._at_mark, total
        return delta


class Comm:
    """``torch.distributed`` for one group of ranks, counting bytes and time in a shared meter.

    Ranks are *global* ranks (what ``torch.distributed`` takes for ``src``/``dst`` with a
    group); ``size`` and ``group_rank`` describe the group. Byte model: a point-to-point
    send counts its payload (measured); a broadcast counts ``(n-1)`` payloads on the
    source, an all-reduce ``2 (n-1)/n`` of the payload (ring), an all-gather ``(n-1)``
    times this rank's part (all modelled).
    """

    def __init__(self, rank: int, world: int, device: torch.device, meter: ByteMeter | None = None,
                 group: Any = None, name: str = "world") -> None:
        self.rank, self.device, self.group, self.name = rank, device, group, name
        self.meter = meter if meter is not None else ByteMeter()
        if group is None:
            self.world, self.group_rank = world, rank
        else:
            self.world, self.group_rank = dist.get_world_size(group), dist.get_rank(group)

    def sub(self, group: Any, name: str) -> "Comm":
        """The same meter on a sub-group (e.g. ``mesh.get_group("tp")``)."""
        return Comm(self.rank, self.world, self.device, self.meter, group=group, name=name)

    # ------------------------------------------------------------ accounting
    @property
    def bytes_sent(self) -> int:
        return self.meter.total

    @property
    def seconds(self) -> float:
        return self.meter.seconds

    def add_modelled(self, nbytes: int) -> None:
        """Bytes of communication done outside this object (e.g. DDP's hooks), by formula."""
        self.meter.modelled += int(nbytes)

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        tic = time.perf_counter()
        try:
            yield
        finally:
            if self.meter.delay_s:
                time.sleep(self.meter.delay_s)
            self.meter.seconds += time.perf_counter() - tic

    @staticmethod
    def _nbytes(tensor: torch.Tensor) -> int:
        return tensor.numel() * tensor.element_size()

    # ------------------------------------------------------- point to point
    def isend(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> dist.Work:
        """Start sending ``tensor`` (contiguous, kept alive by the caller) to global rank ``dst``;
        returns the handle to ``wait()`` on. Non-blocking, so 1F1B schedules cannot deadlock."""
        self.meter.measured += self._nbytes(tensor)
        with self._timed():
            return dist.isend(tensor, dst, group=self.group, tag=tag)

    def irecv(self, tensor: torch.Tensor, src: int, tag: int = 0) -> dist.Work:
        """Start receiving into ``tensor`` from global rank ``src``; returns the handle."""
        with self._timed():
            return dist.irecv(tensor, src, group=self.group, tag=tag)

    def wait(self, works: list[dist.Work]) -> None:
        with self._timed():
            for work in works:
                work.wait()

    def exchange(self, tensor: torch.Tensor | None, send_to: int | None,
                 recv_from: int | None, recv_into: torch.Tensor | None = None) -> torch.Tensor | None:
        """Send ``tensor`` to ``send_to`` and receive one from ``recv_from`` (either may be None),
        and wait for both.

        The message lands in ``recv_into`` when given (a reused buffer keeps per-iteration
        allocations, and so peak memory, flat), else in a new tensor shaped like ``tensor``.
        """
        received = None
        if recv_from is not None:
            if recv_into is None:
                assert tensor is not None, "nothing to shape the receive buffer after"
                recv_into = torch.empty_like(tensor)
            received = recv_into
        payload = tensor.contiguous() if send_to is not None and tensor is not None else None
        if payload is None and received is None:
            return None
        if self.device.type == "cuda":
            # NCCL: group the pair so lazily created peer communicators cannot deadlock.
            ops = ([dist.P2POp(dist.irecv, received, recv_from, group=self.group)] if received is not None else [])
            if payload is not None:
                ops.append(dist.P2POp(dist.isend, payload, send_to, group=self.group))
                self.meter.measured += self._nbytes(payload)
            with self._timed():
                works = dist.batch_isend_irecv(ops)
        else:
            # gloo: plain isend/irecv (batch_isend_irecv hangs on gloo before torch 2.8).
            works = [self.irecv(received, recv_from)] if received is not None else []
            if payload is not None:
                works.append(self.isend(payload, send_to))
        self.wait(works)
        return received

    def exchange_tagged(self, sends: list[tuple[torch.Tensor, int, int]],
                        recvs: list[tuple[torch.Tensor, int, int]]) -> None:
        """Several messages at once: ``sends`` as ``(tensor, dst, tag)``, ``recvs`` as
        ``(buffer, src, tag)``; all are posted, then all are waited for.

        Why tags: a worker holding several window positions may send two messages to the same
        rank in one round; the tag (the receiving position's slot) says which buffer each is
        for. NCCL ignores tags and matches in posting order instead, which both sides keep
        (ascending slot order).
        """
        if not sends and not recvs:
            return
        if self.device.type == "cuda":
            ops = [dist.P2POp(dist.irecv, buf, src, group=self.group, tag=tag) for buf, src, tag in recvs]
            ops += [dist.P2POp(dist.isend, t, dst, group=self.group, tag=tag) for t, dst, tag in sends]
            self.meter.measured += sum(self._nbytes(t) for t, _, _ in sends)
            with self._timed():
                works = dist.batch_isend_irecv(ops)
        else:
            works = [self.irecv(buf, src, tag) for buf, src, tag in recvs]
            works += [self.isend(t, dst, tag) for t, dst, tag in sends]
        self.wait(works)

    # ----------------------------------------------------------- collectives
    def broadcast_(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        if self.world > 1:
            with self._timed():
                dist.broadcast(tensor, src=src, group=self.group)
        if self.rank == src:
            self.meter.modelled += self._nbytes(tensor) * max(0, self.world - 1)
        return tensor

    def all_reduce_(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
        if self.world > 1:
            with self._timed():
                dist.all_reduce(tensor, op=op, group=self.group)
            self.meter.modelled += int(2 * (self.world - 1) / self.world * self._nbytes(tensor))
        return tensor

    def average_(self, tensors: list[torch.Tensor]) -> int:
        """Average ``tensors`` across the group, in place, with ``torch.distributed``'s
        ``model_averaging.utils.average_parameters`` (one flat all-reduce); returns the
        payload in bytes (the ring all-reduce's traffic is counted as modelled bytes).

        torch rebinds each ``.data`` to a view of its flat buffer; the values are copied back
        into each tensor's own storage instead, so a parameter keeps its address (and the CPU
        kernels their rounding) whether or not the run was resumed in between.
        """
        from torch.distributed.algorithms.model_averaging.utils import average_parameters

        payload = sum(self._nbytes(t) for t in tensors)
        if self.world == 1 or not tensors:
            return payload
        storage = [t.data for t in tensors]
        with self._timed():
            average_parameters(iter(tensors), self.group)
        for tensor, own in zip(tensors, storage):
            own.copy_(tensor.data)
            tensor.data = own
        self.meter.modelled += int(2 * (self.world - 1) / self.world * payload)
        return payload

    def all_gather_into_rows(self, tensor: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """All-gather one flat tensor per rank into the rows of ``out`` (group size, d)."""
        if self.world == 1:
            out[0].copy_(tensor)
            return out
        with self._timed():
            dist.all_gather(list(out.unbind(0)), tensor.contiguous(), group=self.group)
        self.meter.modelled += self._nbytes(tensor) * (self.world - 1)
        return out

    def all_gather_floats(self, values: list[float]) -> torch.Tensor:
        """Gather a short list of floats from every rank of the group into a (size, len) CPU float64 tensor."""
        local = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world == 1:
            return local.unsqueeze(0).cpu()
        parts = [torch.empty_like(local) for _ in range(self.world)]
        with self._timed():
            dist.all_gather(parts, local, group=self.group)
        self.meter.modelled += self._nbytes(local) * (self.world - 1)
        return torch.stack(parts).cpu()

    def broadcast_object(self, obj: Any, src: int) -> Any:
        """A small object (a dict of evaluation metrics) of global rank ``src`` on every group
        rank. Not metered: a few hundred bytes of bookkeeping inside an iteration would blur the
        per-iteration byte bounds the methods are checked against."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.group,
                                   device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather_objects(self, obj: Any, dst: int) -> list[Any] | None:
        """Every group rank's ``obj`` on global rank ``dst`` (None elsewhere); each sender's
        pickle is counted as measured bytes (end-of-run state merges show in the meter too)."""
        if self.world == 1:
            return [obj]
        if self.rank != dst:
            self.meter.measured += len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        out: list[Any] | None = [None] * self.world if self.rank == dst else None
        with self._timed():
            dist.gather_object(obj, out, dst=dst, group=self.group)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)
