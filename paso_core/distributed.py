"""Process-group and device helpers: gloo on CPU, NCCL on CUDA, and byte accounting.

Every message a method sends goes through :class:`Comm`, so the bytes each rank sends
are counted the same way for every method and can be compared side by side.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import resource
import sys
import time
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
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


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


class Comm:
    """Thin wrapper over ``torch.distributed`` that counts the payload bytes this rank sends.

    Byte model: a point-to-point send counts its payload; a broadcast counts the payload on
    the source; an all-reduce counts ``2 (w-1)/w`` of the payload (ring); an all-gather
    counts ``(w-1)`` times this rank's part.
    """

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device
        self.bytes_sent = 0
        self.seconds = 0.0  # wall time spent inside communication calls

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - tic

    @staticmethod
    def _nbytes(tensor: torch.Tensor) -> int:
        return tensor.numel() * tensor.element_size()

    def exchange(self, tensor: torch.Tensor | None, send_to: int | None,
                 recv_from: int | None, recv_into: torch.Tensor | None = None) -> torch.Tensor | None:
        """Send ``tensor`` to ``send_to`` and receive one from ``recv_from`` (either may be None).

        The message lands in ``recv_into`` when given (a reused buffer keeps per-iteration
        allocations, and so peak memory, flat), else in a new tensor shaped like ``tensor``.
        """
        with self._timed():
            return self._exchange(tensor, send_to, recv_from, recv_into)

    def _exchange(self, tensor: torch.Tensor | None, send_to: int | None,
                  recv_from: int | None, recv_into: torch.Tensor | None) -> torch.Tensor | None:
        ops: list[dist.P2POp] = []
        received = None
        if recv_from is not None:
            if recv_into is None:
                assert tensor is not None, "nothing to shape the receive buffer after"
                recv_into = torch.empty_like(tensor)
            received = recv_into
            ops.append(dist.P2POp(dist.irecv, received, recv_from))
        if send_to is not None and tensor is not None:
            ops.append(dist.P2POp(dist.isend, tensor.contiguous(), send_to))
            self.bytes_sent += self._nbytes(tensor)
        if not ops:
            return received
        if self.device.type == "cuda":
            # NCCL: group the pair so lazily created peer communicators cannot deadlock.
            requests = dist.batch_isend_irecv(ops)
        else:
            # gloo: plain isend/irecv (batch_isend_irecv hangs on gloo before torch 2.8).
            requests = [op.op(op.tensor, op.peer) for op in ops]
        for request in requests:
            request.wait()
        return received

    def broadcast_(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        if self.world > 1:
            with self._timed():
                dist.broadcast(tensor, src=src)
        if self.rank == src:
            self.bytes_sent += self._nbytes(tensor) * max(0, self.world - 1)
        return tensor

    def all_reduce_(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
        if self.world > 1:
            with self._timed():
                dist.all_reduce(tensor, op=op)
            self.bytes_sent += int(2 * (self.world - 1) / self.world * self._nbytes(tensor))
        return tensor

    def all_gather_into_rows(self, tensor: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """All-gather one flat tensor per rank into the rows of ``out`` (world, d)."""
        if self.world == 1:
            out[0].copy_(tensor)
            return out
        with self._timed():
            dist.all_gather(list(out.unbind(0)), tensor.contiguous())
        self.bytes_sent += self._nbytes(tensor) * (self.world - 1)
        return out

    def all_gather_floats(self, values: list[float]) -> torch.Tensor:
        """Gather a short list of floats from every rank into a (world, len) CPU float64 tensor."""
        local = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world == 1:
            return local.unsqueeze(0).cpu()
        parts = [torch.empty_like(local) for _ in range(self.world)]
        with self._timed():
            dist.all_gather(parts, local)
        self.bytes_sent += self._nbytes(local) * (self.world - 1)
        return torch.stack(parts).cpu()

    def broadcast_object(self, obj: Any, src: int) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
