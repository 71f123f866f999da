"""Where datasets and pretrained models live on disk, checked without importing torch.

Why a module of its own: :func:`paso_core.config.validate` must reject a missing or
half-copied dataset, or a ``block_size`` longer than a local model's context, *before*
any worker starts, and validation must stay cheap (no torch). The loaders in
:mod:`.vision_data` and :mod:`.text_data` use these same functions, so the files checked
up front are exactly the files read later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- CIFAR-10
CIFAR_DIRNAME = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
CIFAR_META_FILE = "batches.meta"
CIFAR_FILES = (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE, CIFAR_META_FILE)
#: How to describe the layout in error messages.
CIFAR_LAYOUT = f"'{CIFAR_DIRNAME}/' (torchvision's layout: data_batch_1..5, test_batch, batches.meta)"


def find_cifar10_dir(data_root: str | Path | None) -> Path | None:
    """The ``cifar-10-batches-py`` directory for ``data_root``, or None if it is not there.

    ``data_root`` may be the directory *containing* ``cifar-10-batches-py`` (torchvision's
    ``root``) or ``cifar-10-batches-py`` itself.
    """
    if data_root is None:
        return None
    root = Path(data_root).expanduser()
    for candidate in (root / CIFAR_DIRNAME, root):
        if not candidate.is_dir():
            continue
        if candidate.name == CIFAR_DIRNAME or any((candidate / n).is_file() for n in CIFAR_FILES):
            return candidate
    return None


def cifar10_problem(data_root: str | Path | None) -> str | None:
    """Why CIFAR-10 cannot be read from ``data_root``, as a clause naming what is missing
    (None when every file is there). Callers add the advice that fits their context."""
    directory = find_cifar10_dir(data_root)
    if directory is None:
        if data_root is None:
            return "CIFAR-10 not found (no data_root was given)"
        root = Path(data_root).expanduser()
        return f"CIFAR-10 not found (looked for {root / CIFAR_DIRNAME} and {root})"
    missing = [name for name in CIFAR_FILES if not (directory / name).is_file()]
    if missing:
        return f"the CIFAR-10 directory {directory} is incomplete: missing {', '.join(missing)}"
    return None


# --------------------------------------------------------------------------- Tiny-ImageNet
TINY_DIRNAME = "tiny-imagenet-200"
#: How to describe the layout in error messages (the archive's own layout, unpacked).
TINY_LAYOUT = (f"'{TINY_DIRNAME}/' (the archive's layout: wnids.txt, train/<wnid>/images/*.JPEG, "
               "val/images/*.JPEG, val/val_annotations.txt)")


def find_tinyimagenet_dir(data_root: str | Path | None) -> Path | None:
    """The ``tiny-imagenet-200`` directory for ``data_root`` (its parent or itself), or None."""
    if data_root is None:
        return None
    root = Path(data_root).expanduser()
    for candidate in (root / TINY_DIRNAME, root):
        if (candidate / "wnids.txt").is_file():
            return candidate
    return None


def tinyimagenet_problem(data_root: str | Path | None) -> str | None:
    """Why Tiny-ImageNet cannot be read from ``data_root`` (None when its layout is complete):
    the class list, a training folder per class, and the validation images and labels."""
    directory = find_tinyimagenet_dir(data_root)
    if directory is None:
        where = "no data_root was given" if data_root is None else (
            f"looked for {Path(data_root).expanduser() / TINY_DIRNAME / 'wnids.txt'} and "
            f"{Path(data_root).expanduser() / 'wnids.txt'}")
        return f"Tiny-ImageNet not found ({where})"
    wnids = (directory / "wnids.txt").read_text().split()
    missing = [f"train/{w}/images" for w in wnids if not (directory / "train" / w / "images").is_dir()]
    missing += [n for n in ("val/images", "val/val_annotations.txt") if not (directory / n).exists()]
    if not wnids:
        return f"{directory / 'wnids.txt'} lists no classes"
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return f"the Tiny-ImageNet directory {directory} is incomplete: missing {shown}"
    return None


# --------------------------------------------------------------------------- WikiText-2
SPLITS = ("train", "validation", "test")
WIKITEXT_TOKEN_FILES = {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens",
                        "test": "wiki.test.tokens"}
WIKITEXT_PARQUET_FILES = {s: f"{s}-00000-of-00001.parquet" for s in SPLITS}
WIKITEXT_HUB_SUBDIR = "wikitext-2-raw-v1"


def _wikitext_candidates(root: Path) -> list[Path]:
    """The train files searched for WikiText-2, in order (also used in error messages)."""
    tokens_dirs = [root, root / "wikitext-2-raw", root / "wikitext-2"]
    parquet_dirs = [root / WIKITEXT_HUB_SUBDIR, root / "wikitext" / WIKITEXT_HUB_SUBDIR, root]
    out = [d / WIKITEXT_TOKEN_FILES["train"] for d in tokens_dirs]
    out += [d / WIKITEXT_PARQUET_FILES["train"] for d in parquet_dirs]
    return out


def _layout_of(train_file: Path) -> dict[str, str]:
    return WIKITEXT_TOKEN_FILES if train_file.name.endswith(".tokens") else WIKITEXT_PARQUET_FILES


def find_wikitext_files(root: Path) -> tuple[str, dict[str, str]] | None:
    """``("text" | "parquet", {split: file})`` for the first complete WikiText-2 layout under ``root``."""
    for train_file in _wikitext_candidates(root):
        names = _layout_of(train_file)
        files = {split: train_file.parent / name for split, name in names.items()}
        if all(f.is_file() for f in files.values()):
            builder = "text" if names is WIKITEXT_TOKEN_FILES else "parquet"
            return builder, {split: str(f) for split, f in files.items()}
    return None


def _missing_wikitext_files(root: Path) -> list[str]:
    """Files lacking from layouts whose train file exists (a half-copied dataset)."""
    missing = []
    for train_file in _wikitext_candidates(root):
        if train_file.is_file():
            missing += [str(train_file.parent / n) for n in _layout_of(train_file).values()
                        if not (train_file.parent / n).is_file()]
    return missing


def missing_wikitext_message(data_root: str | Path | None) -> str:
    """The error for a ``data_root`` without a complete WikiText-2: every path looked at,
    every file a half-copied layout lacks, and how to fix it."""
    looked_for: list[str] = []
    if data_root is not None:
        root = Path(data_root).expanduser()
        looked_for = [str(p) for p in _wikitext_candidates(root)]
        looked_for += [f"(incomplete: {m} missing)" for m in _missing_wikitext_files(root)]
    where = ", ".join(looked_for) if looked_for else "(no data_root given)"
    return (
        f"WikiText-2 not found; looked for {where}. Put wiki.train.tokens/wiki.valid.tokens/"
        f"wiki.test.tokens or {WIKITEXT_HUB_SUBDIR}/{{train,validation,test}}-00000-of-00001.parquet "
        "under data_root, or pass download=True on a machine with a network"
    )


# --------------------------------------------------------------------------- model directories
#: Config keys that give a model's context (longest sequence), in the order they are tried.
CONTEXT_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length")


def context_from(values: Any) -> int | None:
    """The context a model config states: the first positive int among :data:`CONTEXT_ATTRS`.

    ``values`` is a transformers config object or the dict of its ``config.json``.
    """
    get = values.get if isinstance(values, dict) else lambda k: getattr(values, k, None)
    for attr in CONTEXT_ATTRS:
        value = get(attr)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    """``model_dir/config.json`` as a dict; ValueError naming the file if it is missing or not JSON."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"model_dir={str(model_dir)!r} has no config.json; save the model there "
                         "with model.save_pretrained(model_dir)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON model config ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object; not a model config")
    return data


def check_block_size(block_size: int, ctx: int | None, model_name: str) -> None:
    """Blocks longer than the model context would index past its position embeddings."""
    if ctx is not None and block_size > ctx:
        raise ValueError(
            f"block_size={block_size} is larger than the context of model={model_name!r} "
            f"({ctx} positions); use block_size <= {ctx}")
