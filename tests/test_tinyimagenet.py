"""The PipeOptim seed's data and models: Tiny-ImageNet read from its archive layout (tiny JPEG
files written here), its checks before launch, and ResNet-101 / Inception-V3 as blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from paso_core.config import RunConfig, validate
from paso_core.options import ConfigError
from paso_core.tasks.layouts import tinyimagenet_problem
from paso_core.tasks.vision_data import load_tinyimagenet
from paso_core.tasks.vision_models import build_vision_model, vision_blocks

WNIDS = ["n01443537", "n01629819", "n01641577"]


def write_tiny_imagenet(root: Path, per_class: int = 2, size: int = 64) -> Path:
    """The archive's layout with ``per_class`` training and validation images per class
    (one of them grayscale, as some real ones are)."""
    from PIL import Image

    base = root / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    annotations = []
    for c, wnid in enumerate(WNIDS):
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            image = Image.fromarray(pixels) if (c, i) != (1, 0) else Image.fromarray(pixels[..., 0], mode="L")
            image.save(images / f"{wnid}_{i}.JPEG", quality=100)
            name = f"val_{c * per_class + i}.JPEG"
            Image.fromarray(pixels).save(base / "val" / "images" / name, quality=100)
            annotations.append(f"{name}\t{wnid}\t0\t0\t{size - 1}\t{size - 1}")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return base


def test_loader_reads_the_archive_layout(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path)
    data = load_tinyimagenet(tmp_path)
    assert data.train_x.shape == (6, 3, 64, 64) and data.train_x.dtype == torch.uint8
    assert data.train_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.test_x.shape == (6, 3, 64, 64) and data.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.classes == WNIDS and data.pixel_max == 255
    gray = data.train_x[2]  # the grayscale one, converted to RGB: three equal channels
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_a_run_on_it_validates(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path)
    cfg = validate(RunConfig.from_dict({"task": "vision", "dataset": "tinyimagenet", "data_root": str(tmp_path),
                                        "method": "serial", "model": "cnn"}))
    assert cfg.dataset == "tinyimagenet"


@pytest.mark.parametrize("damage,message", [
    (lambda base: (base / "wnids.txt").unlink(), "Tiny-ImageNet not found"),
    (lambda base: (base / "val" / "val_annotations.txt").unlink(), "incomplete: missing val/val_annotations.txt"),
    (lambda base: __import__("shutil").rmtree(base / "train" / WNIDS[1]), f"missing train/{WNIDS[1]}/images"),
])
def test_a_data_root_without_the_dataset_is_refused_before_launch(tmp_path: Path, damage, message: str) -> None:
    damage(write_tiny_imagenet(tmp_path))
    assert message in (tinyimagenet_problem(tmp_path) or "")
    for download in (False, True):  # there is no downloader for it: the files must be there
        with pytest.raises(ConfigError, match="does not hold Tiny-ImageNet"):
            validate(RunConfig.from_dict({"task": "vision", "dataset": "tinyimagenet", "data_root": str(tmp_path),
                                          "method": "pipeoptim", "model": "resnet101", "download": download}))


@pytest.mark.parametrize("name,n_blocks", [("resnet101", 35), ("inception_v3", 13)])
def test_seed_models_are_the_composition_of_their_blocks(name: str, n_blocks: int) -> None:
    torch.manual_seed(0)
    model = build_vision_model(name, 3, 64, 200).eval()
    blocks = vision_blocks(model)
    assert len(blocks) == n_blocks
    assert {id(p) for _, b in blocks for p in b.parameters()} == {id(p) for p in model.parameters()}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = x
        for _, block in blocks:
            out = block(out)
        assert torch.equal(out, model(x)) and out.shape == (2, 200)
