"""A lazy, streaming parquet text source whose batch of step t is a function of (seed, t) only.

Layout under ``data_root`` (one or more parquet shards per split, read in sorted path order)::

    train/*.parquet   validation/*.parquet   test/*.parquet
    # or Hugging Face datasets' names at the top level:
    train-00000-of-00002.parquet   validation-00000-of-00001.parquet   test.parquet

**The sample unit.** Every train row is one sample. Sample ``i`` (row ``k`` of row group ``g``,
which holds ``n`` rows) is the token sequence ``row_k eos row_{k+1} eos ...`` with row
indices taken cyclically *within g* (``k+1, ..., n-1, 0, 1, ...``), cut to its first
``block_size + 1`` tokens; inputs are ``[:-1]``, targets ``[1:]``, as for the packed blocks of
the other datasets (:func:`text_data.blocks_from_stream`). Why this and not one row padded
to ``block_size + 1``: every target is a real token, so the task's loss stays the plain
mean over ``batch_size * block_size`` targets and equal data-parallel shards average back
to the full-batch loss exactly (a mean over non-padded targets would not); and a sample
never needs another row group, so reading stays lazy. The number of samples is the row
count, known from the parquet footers without reading any data.

**The batch of step t** is rows ``perm[j*bs:(j+1)*bs]`` of the per-epoch permutation
``perm = randperm(rows)`` seeded by ``(seed, epoch)`` (:func:`epoch_permutation`), with
``epoch, j = divmod(t, rows // bs)``. Data-parallel coordinate ``r`` of ``R`` takes its
contiguous share of those rows (as :func:`base.shard_tensors` does) and reads only the row
groups that hold them. Serial, data-parallel and pipelined runs therefore see the same
data per step whatever the number of ranks or loader workers.

Seed 003 instead hands row groups round-robin to ``rank * num_workers + worker`` and pads
each row to the context with its labels equal to the inputs (padding included); its batch
of step t depends on the world size and the worker count, so it is not used here.

Tokenisation happens when a sample is built: in the training process with
``loader_workers=0``, or ahead of time in ``torch.utils.data.DataLoader`` workers
(:class:`StepPrefetcher`), which give the same tensors.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import text_data as td
from .base import generator_for, shard_tensors
from .layouts import SPLITS

#: Train rows (the first ones, in file order) that the BPE tokenizer of built models is trained on.
TOKENIZER_SAMPLE_ROWS = 20_000
#: Decoded row groups kept per process (each DataLoader worker has its own cache).
CACHED_ROW_GROUPS = 8
LAYOUT = ("train/*.parquet, validation/*.parquet, test/*.parquet under data_root "
          "(or train-*.parquet, validation-*.parquet, test-*.parquet at its top level)")


class ParquetLayoutError(ValueError):
    """data_root does not hold readable parquet shards with the text column."""


# ---------------------------------------------------------------------------- layout
def split_files(root: Path, split: str) -> list[Path]:
    """The parquet shards of ``split``: ``root/split/*.parquet`` and ``root/split[-*].parquet``."""
    found = set((root / split).glob("*.parquet")) if (root / split).is_dir() else set()
    found |= set(root.glob(f"{split}-*.parquet")) | set(root.glob(f"{split}.parquet"))
    return sorted(p for p in found if p.is_file())


def find_shards(data_root: str | Path | None) -> dict[str, list[Path]]:
    """Every split's shards, or :class:`ParquetLayoutError` naming what was found and expected."""
    if not data_root:
        raise ParquetLayoutError(f"dataset='parquet' needs data_root=<directory>; expected {LAYOUT}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise ParquetLayoutError(f"data_root={str(data_root)!r} is not a directory; expected {LAYOUT}")
    shards = {split: split_files(root, split) for split in SPLITS}
    for split, files in shards.items():
        if not files:
            present = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:20]
            raise ParquetLayoutError(
                f"no parquet files for the {split!r} split in {root}: looked for {root / split}/*.parquet, "
                f"{root}/{split}-*.parquet and {root}/{split}.parquet; found {present or 'an empty directory'}; "
                f"expected {LAYOUT}")
    return shards


def check_text_column(files: Sequence[Path], text_column: str) -> None:
    """Every shard must have ``text_column`` (only the footer's schema is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in files:
        try:
            names = pq.read_schema(path).names
        except (OSError, pa.ArrowException) as err:
            raise ParquetLayoutError(f"{path} is not a readable parquet file ({type(err).__name__}: {err})") from None
        if text_column not in names:
            raise ParquetLayoutError(f"{path} has no column text_column={text_column!r}; its columns are: "
                                     f"{', '.join(names)}. Pass text_column=<one of them>")


def open_splits(data_root: str | None, text_column: str) -> dict[str, "RowGroupIndex"]:
    """Every split's row-group index, after checking directory, shards, column and row counts."""
    shards = find_shards(data_root)
    check_text_column([p for files in shards.values() for p in files], text_column)
    indexes = {split: RowGroupIndex.of(files) for split, files in shards.items()}
    for split, index in indexes.items():
        if index.rows == 0:
            raise ParquetLayoutError(f"the {split!r} split in {data_root} has no rows "
                                     f"({', '.join(map(str, shards[split]))})")
    return indexes


def layout_problem(data_root: str | None, text_column: str) -> str | None:
    """Why ``data_root`` cannot be streamed (missing directory, split, column, rows), or None."""
    try:
        open_splits(data_root, text_column)
    except ParquetLayoutError as err:
        return str(err)
    return None


# ---------------------------------------------------------------------------- row groups
@dataclass(frozen=True)
class RowGroup:
    """One row group of one shard, and the global index of its first row."""

    file: Path
    index: int
    start: int
    rows: int


@dataclass(frozen=True)
class RowGroupIndex:
    """Where every row of a split lives, from the parquet footers alone (no data is read)."""

    groups: tuple[RowGroup, ...]
    starts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", tuple(g.start for g in self.groups))

    @classmethod
    def of(cls, files: Sequence[Path]) -> "RowGroupIndex":
        import pyarrow.parquet as pq

        groups, start = [], 0
        for path in files:
            meta = pq.read_metadata(path)
            for i in range(meta.num_row_groups):
                n = meta.row_group(i).num_rows
                if n:
                    groups.append(RowGroup(path, i, start, n))
                    start += n
        return cls(tuple(groups))

    @property
    def rows(self) -> int:
        return self.groups[-1].start + self.groups[-1].rows if self.groups else 0

    def locate(self, row: int) -> tuple[int, int]:
        """``(group id, row within the group)`` of global row ``row``."""
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} is outside 0..{self.rows - 1}")
        gid = bisect.bisect_right(self.starts, row) - 1
        return gid, row - self.groups[gid].start

    def groups_of(self, rows: Sequence[int]) -> set[int]:
        """The row groups holding ``rows``: exactly what building those samples reads."""
        return {self.locate(int(r))[0] for r in rows}


class RowGroupReader:
    """Decoded text of row groups, read on first use and kept in a small LRU cache.

    ``reads`` lists every group id actually read from disk (tests assert laziness with it)."""

    def __init__(self, index: RowGroupIndex, text_column: str, capacity: int = CACHED_ROW_GROUPS) -> None:
        self.index, self.text_column, self.capacity = index, text_column, capacity
        self.reads: list[int] = []
        self._cache: OrderedDict[int, list[str]] = OrderedDict()

    def texts(self, gid: int) -> list[str]:
        if gid in self._cache:
            self._cache.move_to_end(gid)
            return self._cache[gid]
        import pyarrow.parquet as pq

        group = self.index.groups[gid]
        # A fresh handle per read: a handle inherited by forked DataLoader workers would be shared.
        with pq.ParquetFile(group.file) as handle:
            column = handle.read_row_group(group.index, columns=[self.text_column]).column(0)
        self.reads.append(gid)
        self._cache[gid] = [value or "" for value in column.to_pylist()]
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return self._cache[gid]

    def first_rows(self, limit: int) -> list[str]:
        """The first ``limit`` rows in file order (a fixed, bounded sample)."""
        out: list[str] = []
        for gid in range(len(self.index.groups)):
            if len(out) >= limit:
                break
            out.extend(self.texts(gid)[:limit - len(out)])
        return out


# ---------------------------------------------------------------------------- pure math
def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """Sample order of one epoch, a function of (seed, epoch) only (TextTask's stream 3)."""
    return torch.randperm(n, generator=generator_for(seed, epoch, stream=3))


def step_rows(perm: torch.Tensor, index: int, batch_size: int) -> torch.Tensor:
    """The global batch's rows: slice ``index`` of the epoch's permutation."""
    return perm[index * batch_size:(index + 1) * batch_size]


def row_window(tokens_of: Callable[[int], Sequence[int]], first: int, rows: int, length: int,
               eos_id: int) -> list[int]:
    """``tokens(first) eos tokens(first+1) eos ...`` (row indices mod ``rows``) cut to ``length``.

    Every row adds at least its eos, so the loop ends after at most ``length`` rows."""
    out: list[int] = []
    k = first
    while len(out) < length:
        out.extend(tokens_of(k))
        out.append(eos_id)
        k = (k + 1) % rows
    return out[:length]


# ---------------------------------------------------------------------------- samples
def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of one row, exactly as the other datasets tokenise a document (no special tokens)."""
    return td.tokenize_documents(tokenizer, [text])[0]


class TrainSamples:
    """The train split as samples (see the module docstring), built and tokenised on demand."""

    def __init__(self, reader: RowGroupReader, tokenizer: Any, eos_id: int, block_size: int,
                 batch_size: int, seed: int) -> None:
        self.reader, self.tokenizer, self.eos_id = reader, tokenizer, eos_id
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.rows = reader.index.rows
        self._perm: tuple[int, torch.Tensor] | None = None

    def batches_per_epoch(self) -> int:
        """Full batches per pass over the train rows (the partial last batch is skipped)."""
        if self.batch_size > self.rows:
            raise ValueError(f"batch_size={self.batch_size} is larger than the {self.rows} train rows; "
                             f"use batch_size <= {self.rows}")
        return self.rows // self.batch_size

    def global_rows(self, step: int) -> torch.Tensor:
        """Rows of step ``step``'s global batch."""
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        epoch, index = divmod(step, self.batches_per_epoch())
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.seed, epoch, self.rows))
        return step_rows(self._perm[1], index, self.batch_size)

    def shard_rows(self, step: int, dp_rank: int, dp_size: int) -> torch.Tensor:
        """Coordinate ``dp_rank``'s contiguous share of the step's rows."""
        return shard_tensors((self.global_rows(step),), dp_rank, dp_size)[0]

    def sample(self, row: int) -> list[int]:
        """The ``block_size + 1`` tokens of the sample starting at ``row``."""
        gid, local = self.reader.index.locate(row)
        texts = self.reader.texts(gid)
        return row_window(lambda k: encode(self.tokenizer, texts[k]), local, len(texts),
                          self.block_size + 1, self.eos_id)

    def shard(self, step: int, dp_rank: int, dp_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` of coordinate ``dp_rank``'s share of step ``step`` (CPU)."""
        rows = self.shard_rows(step, dp_rank, dp_size).tolist()
        block = torch.tensor([self.sample(r) for r in rows], dtype=torch.long).reshape(len(rows), -1)
        return block[:, :-1].contiguous(), block[:, 1:].contiguous()


class StepShards:
    """Map-style dataset for ``DataLoader``: item ``t`` is one coordinate's shard of step ``t``."""

    def __init__(self, samples: TrainSamples, dp_rank: int, dp_size: int) -> None:
        self.samples, self.dp_rank, self.dp_size = samples, dp_rank, dp_size

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.samples.shard(step, self.dp_rank, self.dp_size)


class StepPrefetcher:
    """Shards of consecutive steps, tokenised ahead in ``workers`` DataLoader worker processes.

    The iterator starts at the first step asked for (a resumed run starts where it stopped)
    and serves steps in order; a step asked out of order (PASO re-evaluating a window, a
    different shard) is built directly in this process, so results never depend on the
    workers. ``workers=0`` builds every shard directly."""

    def __init__(self, samples: TrainSamples, workers: int, end_step: int, prefetch_factor: int = 2) -> None:
        self.samples, self.workers, self.end_step, self.prefetch_factor = samples, workers, end_step, prefetch_factor
        self._iter: Any = None
        self._key: tuple[int, int] | None = None
        self._next = -1
        if workers:
            # Forked workers after the Rust tokenizer ran its thread pool may deadlock; it must stay serial.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def shard(self, step: int, dp_rank: int, dp_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.workers and self._iter is None and 0 <= step < self.end_step:
            self._start(step, dp_rank, dp_size)
        if self._iter is not None and step == self._next and self._key == (dp_rank, dp_size):
            self._next += 1
            batch = next(self._iter)
            if self._next >= self.end_step:
                self.close()
            return batch
        return self.samples.shard(step, dp_rank, dp_size)

    def _start(self, step: int, dp_rank: int, dp_size: int) -> None:
        from torch.utils.data import DataLoader

        loader = DataLoader(StepShards(self.samples, dp_rank, dp_size), batch_size=None,
                            sampler=range(step, self.end_step), num_workers=self.workers,
                            prefetch_factor=self.prefetch_factor,
                            generator=torch.Generator().manual_seed(0))  # never draws on the global RNG
        self._iter, self._key, self._next = iter(loader), (dp_rank, dp_size), step

    def close(self) -> None:
        """Stop the worker processes (they also stop when the iterator is garbage collected)."""
        iterator, self._iter = self._iter, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


# ---------------------------------------------------------------------------- the source
class ParquetSource:
    """Everything the text task reads from parquet: bounded documents and the train samples."""

    def __init__(self, data_root: str, text_column: str, eval_rows: int) -> None:
        self.data_root, self.text_column, self.eval_rows = data_root, text_column, eval_rows
        self.readers = {s: RowGroupReader(index, text_column) for s, index in open_splits(data_root, text_column).items()}

    def bounded_corpus(self) -> dict[str, list[str]]:
        """The first TOKENIZER_SAMPLE_ROWS train rows (tokenizer) and eval_rows rows of each held-out split."""
        return {"train": self.readers["train"].first_rows(TOKENIZER_SAMPLE_ROWS),
                **{s: self.readers[s].first_rows(self.eval_rows) for s in ("validation", "test")}}

    def train_samples(self, tokenizer: Any, eos_id: int, block_size: int, batch_size: int,
                      seed: int) -> TrainSamples:
        # a reader of its own, so the laziness count covers training reads only
        index = self.readers["train"].index
        return TrainSamples(RowGroupReader(index, self.text_column), tokenizer, eos_id, block_size, batch_size, seed)

    def describe(self) -> dict[str, Any]:
        return {
            "files": {s: sorted({str(g.file) for g in r.index.groups}) for s, r in self.readers.items()},
            "rows": {s: r.index.rows for s, r in self.readers.items()},
            "row_groups": {s: len(r.index.groups) for s, r in self.readers.items()},
            "text_column": self.text_column,
            "tokenizer_sample_rows": min(TOKENIZER_SAMPLE_ROWS, self.readers["train"].index.rows),
            "eval_rows": {s: min(self.eval_rows, self.readers[s].index.rows) for s in ("validation", "test")},
            "sample_convention": ("one sample per train row: row eos next-row eos ... cyclically within its "
                                  "row group, first block_size+1 tokens; inputs=[:-1], targets=[1:]"),
        }
