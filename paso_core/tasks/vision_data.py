"""Image-classification data as whole tensors on the task device (airbench style).

Why whole tensors: every worker must rebuild the batch of step ``t`` from ``(seed, t)``
alone, cheaply and identically. Indexing one preloaded tensor does that with a single
gather, while a DataLoader with per-sample Python would be both slower and stateful.

Images are kept as *raw* ``uint8`` pixels (``0..pixel_max``) and normalised per batch by
:meth:`VisionData.normalize`. Raw storage is 4x smaller than float32 (CIFAR-10 train:
150 MB instead of 600 MB), and padding raw pixels with 0 before normalising reproduces
torchvision's ``RandomCrop(padding, fill=0)`` exactly.

Two datasets:

* ``digits``: scikit-learn's bundled ``load_digits()`` (1797 8x8 grayscale images,
  values 0..16). Works offline; a fixed stratified 80/20 split (seed
  :data:`DIGITS_SPLIT_SEED`, independent of the run seed, so every run of every method
  sees the same test set); mean/std from the training split.
* ``tinyimagenet``: the Tiny-ImageNet-200 archive unpacked (64x64 JPEGs, 200 classes, 500
  training images each; its labelled ``val`` split is the test set), the PipeOptim seed's data.
* ``cifar10``: torchvision's on-disk layout ``cifar-10-batches-py/`` read directly with
  ``pickle`` (no MD5 check, so small hand-written copies in the same format also load);
  standard CIFAR-10 mean/std.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .layouts import (CIFAR_DIRNAME, CIFAR_LAYOUT, CIFAR_META_FILE, CIFAR_TEST_FILE,  # noqa: F401 (re-exported)
                      CIFAR_TRAIN_FILES, TINY_LAYOUT, cifar10_problem, find_cifar10_dir, find_tinyimagenet_dir,
                      tinyimagenet_problem)

# The usual per-channel statistics of the CIFAR-10 training set, in [0, 1] pixel units.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# ImageNet's statistics, the usual normalisation of Tiny-ImageNet (a 200-class ImageNet subset).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
DIGITS_PIXEL_MAX = 16

DATASETS = ("digits", "cifar10", "tinyimagenet")


@dataclass
class VisionData:
    """A train/test split of raw images plus what is needed to normalise them.

    ``train_x``/``test_x`` are ``uint8`` tensors ``N x C x H x W`` holding raw pixel values
    in ``0..pixel_max``; ``train_y``/``test_y`` are ``int64`` labels. ``mean``/``std`` are
    per-channel statistics in ``[0, 1]`` pixel units.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    pixel_max: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    _stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixels -> float32 ``(x / pixel_max - mean) / std`` on the same device as ``x``."""
        key = str(x.device)
        if key not in self._stats:  # cached: no host-to-device copy per batch
            shape = (1, -1, 1, 1)
            self._stats[key] = (
                torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape),
                torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape),
            )
        mean, std = self._stats[key]
        return (x.to(torch.float32) / float(self.pixel_max) - mean) / std

    def to(self, device: torch.device | str) -> "VisionData":
        """The same data with all four tensors on ``device``."""
        return VisionData(
            name=self.name,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
            classes=list(self.classes),
            pixel_max=self.pixel_max,
            mean=self.mean,
            std=self.std,
            source=self.source,
        )


# --------------------------------------------------------------------------- digits
def load_digits_data() -> VisionData:
    """scikit-learn's bundled 8x8 digits with a fixed stratified 80/20 split (offline)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images).round().astype(np.uint8)  # values are integers 0..16
    labels = np.asarray(bunch.target).astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    train_x = torch.from_numpy(images[idx_train]).unsqueeze(1)
    test_x = torch.from_numpy(images[idx_test]).unsqueeze(1)
    scaled = train_x.to(torch.float64) / DIGITS_PIXEL_MAX
    return VisionData(
        name="digits",
        train_x=train_x.contiguous(),
        train_y=torch.from_numpy(labels[idx_train]),
        test_x=test_x.contiguous(),
        test_y=torch.from_numpy(labels[idx_test]),
        classes=[str(int(c)) for c in bunch.target_names],
        pixel_max=DIGITS_PIXEL_MAX,
        mean=(float(scaled.mean()),),
        std=(float(scaled.std()),),
        source="sklearn.datasets.load_digits (bundled)",
    )


# --------------------------------------------------------------------------- CIFAR-10
def _download_cifar10(data_root: str | Path) -> None:
    """Fetch CIFAR-10 with torchvision into ``data_root`` (needs a network)."""
    import torchvision

    root = Path(data_root).expanduser()
    if root.name == CIFAR_DIRNAME:
        root = root.parent
    root.mkdir(parents=True, exist_ok=True)
    try:
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    except Exception as exc:  # network errors come in many types; all need the same advice
        raise RuntimeError(
            f"downloading CIFAR-10 into {root} failed ({type(exc).__name__}: {exc}). On a machine "
            "without a network, copy 'cifar-10-batches-py/' there and pass download=False."
        ) from exc


def _read_pickle(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        obj = pickle.load(fh, encoding="latin1")
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a dict (got {type(obj).__name__}); not CIFAR-10 format")
    return obj


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch -> (uint8 N x 3 x 32 x 32, int64 N)."""
    batch = _read_pickle(path)
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path} lacks 'data'/'labels' (keys: {sorted(batch)}); not CIFAR-10 format")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' has shape {data.shape}, expected N x 3072")
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def load_cifar10(data_root: str | Path | None, download: bool = False) -> VisionData:
    """CIFAR-10 from torchvision's on-disk layout; download it first if asked and missing.

    With ``download=True`` and no ``data_root`` the files go to ``./data`` (git-ignored).
    A missing or incomplete copy is downloaded when allowed (torchvision re-fetches files
    that fail its checksum), else reported with the files that are missing.
    """
    root = data_root if data_root is not None or not download else "data"
    if download and cifar10_problem(root) is not None:
        _download_cifar10(root)
    problem = cifar10_problem(root)
    if problem is not None:
        raise FileNotFoundError(
            f"{problem}. Point data_root at the directory that contains {CIFAR_LAYOUT}, "
            "or pass download=True on a machine with a network.")
    directory = find_cifar10_dir(root)
    assert directory is not None  # cifar10_problem found it

    parts = [_read_cifar_batch(directory / name) for name in CIFAR_TRAIN_FILES]
    test_x, test_y = _read_cifar_batch(directory / CIFAR_TEST_FILE)
    meta = _read_pickle(directory / CIFAR_META_FILE)
    classes = [str(c) for c in meta.get("label_names", [str(i) for i in range(10)])]
    return VisionData(
        name="cifar10",
        train_x=torch.cat([x for x, _ in parts]),
        train_y=torch.cat([y for _, y in parts]),
        test_x=test_x,
        test_y=test_y,
        classes=classes,
        pixel_max=255,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        source=str(directory.resolve()),
    )


# --------------------------------------------------------------------------- Tiny-ImageNet
def _read_images(paths: list[Path]) -> torch.Tensor:
    """JPEGs -> uint8 ``N x 3 x H x W`` (grayscale ones converted to RGB, as torchvision's loader does)."""
    from PIL import Image

    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_tinyimagenet(data_root: str | Path | None) -> VisionData:
    """Tiny-ImageNet-200 from its unpacked archive: train folders per class, and the labelled
    validation split (``val_annotations.txt``) as the test set, as the seed evaluates."""
    problem = tinyimagenet_problem(data_root)
    if problem is not None:
        raise FileNotFoundError(f"{problem}. Point data_root at the directory that contains {TINY_LAYOUT}.")
    directory = find_tinyimagenet_dir(data_root)
    assert directory is not None
    wnids = (directory / "wnids.txt").read_text().split()
    label = {w: i for i, w in enumerate(wnids)}
    train = [(p, label[w]) for w in wnids for p in sorted((directory / "train" / w / "images").glob("*.JPEG"))]
    val = []
    for line in (directory / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            val.append((directory / "val" / "images" / fields[0], label[fields[1]]))
    return VisionData(
        name="tinyimagenet",
        train_x=_read_images([p for p, _ in train]),
        train_y=torch.tensor([y for _, y in train], dtype=torch.int64),
        test_x=_read_images([p for p, _ in val]),
        test_y=torch.tensor([y for _, y in val], dtype=torch.int64),
        classes=wnids,
        pixel_max=255,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        source=str(directory.resolve()),
    )


def load_vision_data(
    dataset: str,
    data_root: str | Path | None = None,
    download: bool = False,
    device: torch.device | str = "cpu",
) -> VisionData:
    """Load ``dataset`` (one of :data:`DATASETS`) and place its tensors on ``device``."""
    if dataset == "digits":
        data = load_digits_data()
    elif dataset == "cifar10":
        data = load_cifar10(data_root, download)
    elif dataset == "tinyimagenet":
        data = load_tinyimagenet(data_root)
    else:
        raise ValueError(f"dataset={dataset!r} is not a vision dataset; choose one of: {', '.join(DATASETS)}")
    return data.to(device)
