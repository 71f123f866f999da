"""dataset=parquet: layout errors, lazy row-group reads, shards, determinism, resume, runs (CPU)."""

from __future__ import annotations

import os
import random
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import paso_core
from paso_core.config import ConfigError, RunConfig, validate
from paso_core.equivalence import Case, compare, run_matrix, serial_reference
from paso_core.tasks import parquet_data as pqd
from paso_core.tasks.text import TextTask

CPU = torch.device("cpu")
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()
#: 2 train files x 3 row groups x 40 rows; held-out splits 2 row groups x 20 rows.
TRAIN_FILES, TRAIN_GROUPS, GROUP_ROWS = 2, 3, 40
TINY = dict(task="text", dataset="parquet", model="llama-tiny", block_size=16, batch_size=4, n_positions=32,
            vocab_size=300, eval_rows=40, eval_batch_size=64, seed=1)
#: DDP sums two shards' gradients where serial takes one full-batch gradient: float32 rounding only.
DDP_RTOL = 1e-5

pytestmark = pytest.mark.usefixtures("paso_cache")


def _rows(rng: random.Random, n: int) -> list[str | None]:
    rows: list[str | None] = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]
    rows[3], rows[7] = "", None  # blank and null rows are legal: their sample starts with eos
    return rows


def _write(path: Path, rows: list[str | None], groups: int, extra_column: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"text": rows, "id": list(range(len(rows)))} if extra_column else {"text": rows}
    pq.write_table(pa.table(data), path, row_group_size=max(1, len(rows) // groups))


def make_dataset(root: Path) -> Path:
    """train/ directory (2 files), validation in HF-datasets naming at the top level, test/ directory."""
    rng = random.Random(0)
    for i in range(TRAIN_FILES):
        _write(root / "train" / f"part-{i}.parquet", _rows(rng, TRAIN_GROUPS * GROUP_ROWS), TRAIN_GROUPS)
    _write(root / "validation-00000-of-00001.parquet", _rows(rng, 40), 2)
    _write(root / "test" / "test-0.parquet", _rows(rng, 40), 2)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("parquet"))


@pytest.fixture(scope="module")
def task(data_root: Path) -> TextTask:
    return TextTask(validate(RunConfig(**TINY, data_root=str(data_root), steps=200)), CPU)


def fresh_samples(task: TextTask) -> pqd.TrainSamples:
    """Train samples with an empty cache and read count (the task's own tokenizer)."""
    return task.parquet.train_samples(task.tokenizer, task.eos_id, task.cfg.block_size, task.cfg.batch_size,
                                      task.cfg.seed)


# ---------------------------------------------------------------------------- pure parts
def test_row_window_is_cyclic_within_the_group_and_eos_separated():
    rows = [[1, 2], [], [3, 4, 5]]
    window = pqd.row_window(lambda k: rows[k], 2, len(rows), 9, eos_id=0)
    assert window == [3, 4, 5, 0, 1, 2, 0, 0, 3]  # row 2, then rows 0, 1 (empty: eos only), row 2 again
    assert pqd.row_window(lambda k: rows[k], 0, len(rows), 2, eos_id=0) == [1, 2]


def test_index_locates_rows_from_footers_only(data_root: Path):
    index = pqd.RowGroupIndex.of(pqd.split_files(data_root, "train"))
    assert index.rows == TRAIN_FILES * TRAIN_GROUPS * GROUP_ROWS
    assert len(index.groups) == TRAIN_FILES * TRAIN_GROUPS
    group = TRAIN_GROUPS + 1  # second file, second group
    assert index.locate(group * GROUP_ROWS + 5) == (group, 5)
    assert index.groups[group].file.name == "part-1.parquet" and index.groups[group].index == 1
    with pytest.raises(IndexError, match="outside"):
        index.locate(index.rows)


def test_describe_names_the_source_and_the_bounded_samples(task: TextTask):
    info = task.describe()
    assert info["parquet"]["rows"] == {"train": TRAIN_FILES * TRAIN_GROUPS * GROUP_ROWS, "validation": 40, "test": 40}
    assert info["parquet"]["eval_rows"] == {"validation": 40, "test": 40}
    assert info["documents"]["validation"] == 40  # evaluation scores exactly eval_rows rows
    assert info["batches_per_epoch"] == info["parquet"]["rows"]["train"] // task.cfg.batch_size


def test_epoch_permutation_covers_every_row_once_per_epoch(task: TextTask):
    samples = fresh_samples(task)
    per_epoch = samples.batches_per_epoch()
    for epoch in range(2):
        rows = torch.cat([samples.global_rows(epoch * per_epoch + j) for j in range(per_epoch)])
        assert sorted(rows.tolist()) == list(range(samples.rows))  # rows // bs batches, no partial one here
    assert not torch.equal(samples.global_rows(0), samples.global_rows(per_epoch))


# ---------------------------------------------------------------------------- laziness and shards
def test_a_rank_reads_only_the_row_groups_holding_its_rows(task: TextTask):
    index = task.parquet.readers["train"].index
    for step in range(3):
        for rank in range(4):
            samples = fresh_samples(task)
            own = samples.shard_rows(step, rank, 4).tolist()
            samples.shard(step, rank, 4)
            assert set(samples.reader.reads) == index.groups_of(own)  # exactly those, each once
            assert len(samples.reader.reads) == len(set(samples.reader.reads))
            assert len(set(samples.reader.reads)) < len(index.groups)


def test_sample_is_the_rows_tokens_then_the_next_rows_of_its_group(task: TextTask):
    samples = fresh_samples(task)
    gid, local = samples.reader.index.locate(GROUP_ROWS + 2)
    texts = samples.reader.texts(gid)
    expected: list[int] = []
    for k in list(range(local, len(texts))) + list(range(len(texts))):
        expected += pqd.encode(task.tokenizer, texts[k]) + [task.eos_id]
    assert samples.sample(GROUP_ROWS + 2) == expected[:task.cfg.block_size + 1]


def test_shards_over_1_2_4_ranks_concatenate_to_the_global_batch(task: TextTask):
    for step in (0, 5, 61):  # 61: the second epoch (60 batches per epoch)
        inputs, targets = task.train_batch(step)
        assert inputs.shape == targets.shape == (task.cfg.batch_size, task.cfg.block_size)
        for size in (1, 2, 4):
            shards = [task.train_shard(step, r, size) for r in range(size)]
            assert torch.equal(torch.cat([s[0] for s in shards]), inputs)
            assert torch.equal(torch.cat([s[1] for s in shards]), targets)
        assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_batches_are_deterministic_and_the_same_with_loader_workers(data_root: Path, task: TextTask):
    steps = 6
    serial = [task.train_batch(t) for t in range(steps)]
    again = TextTask(validate(RunConfig(**TINY, data_root=str(data_root), steps=steps)), CPU)
    workers = TextTask(validate(RunConfig(**TINY, data_root=str(data_root), steps=steps, loader_workers=2)), CPU)
    try:
        for t in range(steps):
            for other in (again.train_batch(t), workers.train_batch(t)):
                assert torch.equal(other[0], serial[t][0]) and torch.equal(other[1], serial[t][1])
        assert workers.stream._iter is None  # served by the workers to the end, then closed
    finally:
        workers.stream.close()


def test_resumed_prefetcher_yields_the_unbroken_runs_batches(task: TextTask):
    end, resume_at = 8, 5
    unbroken = [task.stream.samples.shard(t, 1, 2) for t in range(end)]
    resumed = pqd.StepPrefetcher(fresh_samples(task), workers=2, end_step=end)
    try:
        for t in range(resume_at, end):
            got = resumed.shard(t, 1, 2)
            assert torch.equal(got[0], unbroken[t][0]) and torch.equal(got[1], unbroken[t][1])
        assert resumed._iter is None  # every step came from the workers
    finally:
        resumed.close()


# ---------------------------------------------------------------------------- bad input
def _problem(root: Path, **kw) -> str:
    with pytest.raises(ConfigError) as err:
        validate(RunConfig(**{**TINY, "data_root": str(root), **kw}))
    return str(err.value)


def test_bad_layouts_and_options_fail_before_launch(tmp_path: Path, data_root: Path):
    missing = tmp_path / "nowhere"
    msg = _problem(missing)
    assert str(missing) in msg and "not a directory" in msg and "train/*.parquet" in msg

    partial = tmp_path / "partial"
    _write(partial / "train" / "a.parquet", ["x y"] * 8, 2)
    _write(partial / "test.parquet", ["x y"] * 8, 2)
    msg = _problem(partial)
    assert "'validation' split" in msg and str(partial / "validation") in msg
    assert "test.parquet" in msg and "train/" in msg  # what was found

    msg = _problem(data_root, text_column="body")
    assert "text_column='body'" in msg and "its columns are: text, id" in msg

    assert "needs data_root" in _problem(data_root, data_root=None)
    assert "loader_workers=-1" in _problem(data_root, loader_workers=-1)
    assert "eval_rows=0" in _problem(data_root, eval_rows=0)
    assert "text_column=''" in _problem(data_root, text_column="")
    assert "choose one of: pydoc, wikitext2, parquet" in _problem(data_root, dataset="csv")


def test_empty_split_and_unreadable_file_are_named(tmp_path: Path):
    root = make_dataset(tmp_path / "d")
    _write(root / "test" / "test-0.parquet", [], 1)
    assert "'test' split" in _problem(root) and "no rows" in _problem(root)
    (root / "test" / "test-0.parquet").write_bytes(b"not parquet")
    msg = _problem(root)
    assert str(root / "test" / "test-0.parquet") in msg and "not a readable parquet file" in msg


# ---------------------------------------------------------------------------- runs
def test_serial_run_and_two_process_ddp_match_serial_training(tmp_path: Path, data_root: Path):
    opts = dict(TINY, data_root=str(data_root), steps=3, progress=False, threads_per_worker=1)
    result = paso_core.run(method="serial", **opts, out_dir=str(tmp_path / "serial"))
    summary = result.summary
    assert summary["steps"] == 3 and torch.isfinite(torch.tensor(summary["final_train_loss"]))
    for key in ("final_val_ppl", "final_test_ppl"):
        assert 1.0 < summary[key] < float("inf")
    cfg = validate(RunConfig.from_dict({**opts, "method": "serial"}))
    initial, reference = serial_reference(cfg)
    errors = compare(initial, reference, torch.load(result.path / "final.pt", weights_only=True))
    assert errors["max_abs_diff"] == 0.0

    cases = [Case("ddp-parquet-workers2", dict(opts, method="ddp", nproc=2, loader_workers=2), DDP_RTOL)]
    table = run_matrix(cases, tmp_path / "matrix")
    row = table.iloc[0]
    print(table[["case", "rel_displacement_err", "max_abs_diff", "rtol"]].to_string())
    assert bool(row["passed"]), row.to_dict()
