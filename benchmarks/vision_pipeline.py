"""Input-pipeline throughput: preloaded tensors + tensor augmentation vs DataLoader + PIL.

Why this exists: the vision task keeps the whole training set as one tensor on the task
device and builds the batch of step ``t`` with a seeded gather (``VisionTask.train_batch``),
because PASO must rebuild any step's batch on any worker. This script measures what that
design costs or saves against the usual torchvision recipe, side by side in one run, on
the same images and the same augmentation (random crop with 4-pixel zero padding +
horizontal flip, then normalisation):

* tensor pipeline: ``VisionTask.train_batch(step)`` (with and without augmentation);
* DataLoader pipeline: ``torch.utils.data.DataLoader`` over a torchvision-style dataset
  with ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``
  (PIL per image), for each requested number of worker processes.

Images: the real CIFAR-10 files when ``--data-root`` is given (the DataLoader then uses
``torchvision.datasets.CIFAR10`` itself), otherwise synthetic 32x32 RGB images built in
memory from scikit-learn's digits (upsampled, grey replicated to 3 channels), written in
CIFAR-10's on-disk format to a temporary directory so both pipelines read the same pixels.

Usage: ``python benchmarks/vision_pipeline.py --out artifacts [--data-root DIR]``.
Writes ``<out>/tables/vision_pipeline.{csv,md,json}``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from paso_core import report  # noqa: E402
from paso_core.config import RunConfig  # noqa: E402
from paso_core.tasks.vision import VisionTask  # noqa: E402
from paso_core.tasks.vision_data import (  # noqa: E402
    CIFAR_DIRNAME,
    CIFAR_MEAN,
    CIFAR_STD,
    CIFAR_TRAIN_FILES,
    find_cifar10_dir,
)

TABLE_NAME = "vision_pipeline"


# --------------------------------------------------------------------------- data
def synthetic_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 3x32x32 images (digits upsampled bilinearly, grey in all channels) + labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 16.0).unsqueeze(1)
    big = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    images = (big.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).numpy()
    reps = -(-n // len(images))
    return np.tile(images, (reps, 1, 1, 1))[:n], np.tile(digits.target, reps)[:n].astype(np.int64)


def write_cifar_layout(root: Path, images: np.ndarray, labels: np.ndarray, n_test: int) -> Path:
    """Write images in torchvision's ``cifar-10-batches-py`` format (5 train files + test)."""
    directory = root / CIFAR_DIRNAME
    directory.mkdir(parents=True, exist_ok=True)
    flat = images.reshape(len(images), -1)
    chunks = np.array_split(np.arange(len(images)), len(CIFAR_TRAIN_FILES))
    files = list(zip(CIFAR_TRAIN_FILES, chunks)) + [("test_batch", np.arange(n_test))]
    for name, idx in files:
        batch = {"batch_label": name, "data": flat[idx], "labels": labels[idx].tolist()}
        with (directory / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    meta = {"label_names": [str(i) for i in range(10)], "num_vis": 3072}
    with (directory / "batches.meta").open("wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return root


class ArrayImageDataset(Dataset):
    """In-memory HWC uint8 images; ``__getitem__`` is torchvision.datasets.CIFAR10's."""

    def __init__(self, images_chw: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.data = np.ascontiguousarray(images_chw.transpose(0, 2, 3, 1))
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def pil_transform() -> Callable:
    """The standard torchvision CIFAR-10 training transform."""
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])


# --------------------------------------------------------------------------- timing
@dataclass
class Timing:
    batches: int
    images: int
    seconds: float
    first_batch_s: float


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                 seconds: float, warmup: int) -> Timing:
    """Consume ``warmup`` untimed batches, then batches for at least ``seconds``; count images."""
    start = time.perf_counter()
    for _ in range(warmup):
        next(batches)
    sync(device)
    first = time.perf_counter() - start
    n_batches = n_images = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x, _ = next(batches)
        n_batches += 1
        n_images += int(x.shape[0])
    sync(device)
    return Timing(n_batches, n_images, time.perf_counter() - t0, first)


def tensor_batches(task: VisionTask) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    step = 0
    while True:
        yield task.train_batch(step)
        step += 1


def loader_batches(loader: DataLoader, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless epochs; each batch moved to ``device`` (part of the cost being measured)."""
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# --------------------------------------------------------------------------- runs
@dataclass
class Pipeline:
    """One input pipeline under test: what it is, its batch stream, its set-up time."""

    name: str
    augmentation: str
    num_workers: int | str
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    setup_s: float


def make_task(data_root: Path, batch_size: int, augment: bool, device: torch.device) -> tuple[VisionTask, float]:
    cfg = RunConfig(task="vision", dataset="cifar10", data_root=str(data_root), model="cnn",
                    batch_size=batch_size, augment=augment, seed=0)
    t0 = time.perf_counter()
    task = VisionTask(cfg, device)
    return task, time.perf_counter() - t0


def make_baseline_dataset(real_root: Path | None, task: VisionTask) -> tuple[Dataset, str]:
    """torchvision's CIFAR10 for real files; otherwise the same pixels held in memory.

    torchvision checks every file's MD5, so a partial or hand-made copy falls back to the
    in-memory dataset (same ``__getitem__``, same pixels) and the table says so.
    """
    if real_root is not None:
        try:
            ds = torchvision.datasets.CIFAR10(str(real_root), train=True, transform=pil_transform(), download=False)
            return ds, "torchvision.datasets.CIFAR10"
        except RuntimeError as exc:  # "Dataset not found or corrupted"
            print(f"torchvision.datasets.CIFAR10 refused {real_root} ({exc}); using the in-memory copy")
    images = task.data.train_x.cpu().numpy()
    labels = task.data.train_y.cpu().numpy()
    return ArrayImageDataset(images, labels, pil_transform()), "ArrayImageDataset (CIFAR10.__getitem__ logic)"


def build_pipelines(args: argparse.Namespace, device: torch.device, data_root: Path,
                    real_root: Path | None) -> list[Pipeline]:
    pipelines = []
    for augment in (True, False):
        task, setup = make_task(data_root, args.batch_size, augment, device)
        label = "crop+flip (tensor, seeded per step)" if augment else "none"
        pipelines.append(Pipeline("tensor: VisionTask.train_batch", label, "-", tensor_batches(task), setup))
    t0 = time.perf_counter()
    dataset, ds_name = make_baseline_dataset(real_root, task)
    dataset_s = time.perf_counter() - t0
    for workers in args.workers:
        t0 = time.perf_counter() - dataset_s  # set-up = dataset construction + loader (workers start lazily)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            num_workers=workers, pin_memory=device.type == "cuda",
                            persistent_workers=workers > 0)
        pipelines.append(Pipeline(f"DataLoader: {ds_name} + PIL", "crop+flip (PIL)", workers,
                                  loader_batches(loader, device), time.perf_counter() - t0))
    return pipelines


def run_benchmark(args: argparse.Namespace, device: torch.device, data_root: Path,
                  real_root: Path | None, data_label: str) -> list[dict[str, Any]]:
    """Time every pipeline ``repeats`` times, round-robin, so background load hits all alike."""
    pipelines = build_pipelines(args, device, data_root, real_root)
    timings: list[list[Timing]] = [[] for _ in pipelines]
    for _ in range(args.repeats):
        for pipe, record in zip(pipelines, timings):
            record.append(time_batches(pipe.batches, device, args.seconds, args.warmup))
    rows = [summarise(pipe, record, device, data_label, args.batch_size)
            for pipe, record in zip(pipelines, timings)]
    base = next((r["images_per_s"] for r in rows if r["num_workers"] == 0), None)
    for r in rows:
        r["speedup_vs_dataloader_w0"] = round(r["images_per_s"] / base, 2) if base else None
    return rows


def summarise(pipe: Pipeline, record: list[Timing], device: torch.device, data_label: str,
              batch_size: int) -> dict[str, Any]:
    rates = sorted(t.images / t.seconds for t in record)
    return {
        "pipeline": pipe.name,
        "augmentation": pipe.augmentation,
        "num_workers": pipe.num_workers,
        "device": str(device),
        "data": data_label,
        "batch_size": batch_size,
        "repeats": len(record),
        "images_timed": sum(t.images for t in record),
        "seconds_timed": round(sum(t.seconds for t in record), 2),
        "images_per_s": round(float(np.median(rates)), 1),
        "images_per_s_min": round(rates[0], 1),
        "images_per_s_max": round(rates[-1], 1),
        "setup_s": round(pipe.setup_s, 3),
        "first_warmup_s": round(record[0].first_batch_s, 3),
    }


# --------------------------------------------------------------------------- output
#: What the Markdown table shows (the CSV has every column): the pipeline, its augmentation,
#: workers and device, the batch, the throughput with its spread over repeats and the
#: speed-up; the data (in the notes), counts and warm-up stay in the CSV.
MD_COLUMNS = ["pipeline", "augmentation", "num_workers", "device", "batch_size", "images_per_s", "images_per_s_min",
              "images_per_s_max", "speedup_vs_dataloader_w0", "setup_s"]


def write_outputs(out: Path, rows: list[dict[str, Any]], config: dict[str, Any]) -> Path:
    """The table as CSV, Markdown and JSON through :func:`paso_core.report.save_table`, so the
    JSON carries the same provenance (commit, stack, CPU model, world size) as every artifact."""
    tables = out / "tables"
    threads = torch.get_num_threads()
    notes = (
        f"Data: {config['data']}. Device: {config['device']}; {threads} torch thread(s) in the main process; "
        f"{os.cpu_count()} CPUs. images_per_s is the median of {config['args']['repeats']} round-robin repeats of "
        f"{config['args']['seconds']} s each (min/max alongside). Load average at start "
        f"{config['load_average_1_5_15_min_at_start']}: other processes on the machine lower and scatter the "
        "numbers. setup_s: loading the data (tensor) or building the dataset (DataLoader); first_warmup_s: the "
        "untimed first batches, including DataLoader worker start-up."
    )
    report.save_table(pd.DataFrame(rows), TABLE_NAME, config, root=tables, title="Vision input pipeline throughput",
                      notes=notes, world_size=1, threads=threads, md_columns=MD_COLUMNS)
    return tables


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="artifacts", help="artifact directory (tables go to <out>/tables)")
    p.add_argument("--data-root", default=None, help="CIFAR-10 in torchvision layout; default: synthetic images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per pipeline and repeat")
    p.add_argument("--repeats", type=int, default=3, help="round-robin repeats; the table reports the median")
    p.add_argument("--warmup", type=int, default=5,
                   help="untimed batches before each timed slice (worker start-up, prefetched batches)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to test")
    p.add_argument("--synthetic-images", type=int, default=10_000, help="training images when synthetic")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads in the main process (0: torch's default). 1 matches "
                        "DataLoader workers (1 thread each) and is robust to other load on the machine")
    args = p.parse_args(argv)
    if min(args.batch_size, args.repeats, args.warmup) < 1 or args.seconds <= 0 or args.synthetic_images < 10:
        p.error(f"need batch_size, repeats, warmup >= 1, seconds > 0, synthetic_images >= 10; got {vars(args)}")
    if args.threads < 0:
        p.error(f"--threads must be >= 0; got {args.threads}")
    if any(w < 0 for w in args.workers):
        p.error(f"--workers must be >= 0; got {args.workers}")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch.cuda.is_available() is False")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_at_start = [round(v, 2) for v in os.getloadavg()]  # other processes skew timings
    with tempfile.TemporaryDirectory(prefix="vision_pipeline_") as tmp:
        if args.data_root:
            directory = find_cifar10_dir(args.data_root)
            if directory is None:
                raise SystemExit(f"--data-root {args.data_root!r}: no {CIFAR_DIRNAME}/ found there or at it")
            data_root = real_root = directory.parent
            data_label = f"CIFAR-10 ({directory})"
        else:
            images, labels = synthetic_images(args.synthetic_images)
            data_root = write_cifar_layout(Path(tmp), images, labels, n_test=min(1000, len(images)))
            real_root = None
            data_label = f"synthetic: {len(images)} digits upsampled to 3x32x32 uint8"
        rows = run_benchmark(args, device, data_root, real_root, data_label)
    config = {"args": vars(args), "data": data_label, "device": str(device), "torchvision": torchvision.__version__,
              "load_average_1_5_15_min_at_start": load_at_start,
              "augmentation": "RandomCrop(32, padding=4, zero fill) + RandomHorizontalFlip + Normalize(CIFAR-10)"}
    tables = write_outputs(Path(args.out), rows, config)
    print(report.to_markdown(pd.DataFrame(rows)))
    print(f"wrote {tables / TABLE_NAME}.csv, .md, .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
