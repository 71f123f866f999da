"""Vision task: loaders (digits, a tiny CIFAR-10 copy in torchvision's format), the
(seed, step) -> batch contract, augmentation, sharding, models, metrics, and learning."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paso_core.config import RunConfig
from paso_core.tasks.vision import VisionTask, classification_metrics, random_crop_flip
from paso_core.tasks.vision_data import (
    CIFAR_MEAN,
    CIFAR_STD,
    load_cifar10,
    load_digits_data,
    load_vision_data,
)
from paso_core.tasks.vision_models import build_vision_model

CPU = torch.device("cpu")
PER_FILE = 20
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
METRIC_KEYS = {"test_loss", "test_accuracy", "test_precision", "test_recall", "test_f1"}


# --------------------------------------------------------------------------- fixtures
def write_tiny_cifar(root: Path, per_file: int = PER_FILE, seed: int = 0) -> dict[str, np.ndarray]:
    """A small CIFAR-10 copy in torchvision's exact layout (pickled dicts, latin1-readable)."""
    rng = np.random.default_rng(seed)
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_file)]
        batch = {
            "batch_label": f"tiny {name}",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{name}_{i}.png" for i in range(per_file)],
        }
        with (directory / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=2)
        arrays[f"{name}_data"], arrays[f"{name}_labels"] = data, np.array(labels)
    meta = {"num_cases_per_batch": per_file, "label_names": LABEL_NAMES, "num_vis": 3072}
    with (directory / "batches.meta").open("wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return arrays


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("cifar")
    return root, write_tiny_cifar(root)


def vision_cfg(**kw) -> RunConfig:
    base = dict(task="vision", dataset="digits", model="cnn", batch_size=64, seed=0, augment=False)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def digits_task() -> VisionTask:
    return VisionTask(vision_cfg(), CPU)


@pytest.fixture(scope="module")
def cifar_task(cifar_root) -> VisionTask:
    root, _ = cifar_root
    return VisionTask(vision_cfg(dataset="cifar10", data_root=str(root), batch_size=16, augment=True), CPU)


# --------------------------------------------------------------------------- loaders
def test_cifar_loader_reads_the_files_exactly(cifar_root) -> None:
    root, arrays = cifar_root
    data = load_cifar10(root)
    train = np.concatenate([arrays[f"data_batch_{i}_data"] for i in range(1, 6)])
    train_labels = np.concatenate([arrays[f"data_batch_{i}_labels"] for i in range(1, 6)])
    assert data.train_x.shape == (5 * PER_FILE, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (PER_FILE, 3, 32, 32)
    assert torch.equal(data.train_x, torch.from_numpy(train.reshape(-1, 3, 32, 32)))
    assert torch.equal(data.train_y, torch.from_numpy(train_labels).long())
    assert torch.equal(data.test_x, torch.from_numpy(arrays["test_batch_data"].reshape(-1, 3, 32, 32)))
    assert torch.equal(data.test_y, torch.from_numpy(arrays["test_batch_labels"]).long())
    assert data.classes == LABEL_NAMES and data.image_shape == (3, 32, 32)
    # channel-major: the first 1024 bytes of a row are the red plane
    assert torch.equal(data.train_x[0, 0].flatten(), torch.from_numpy(train[0, :1024]))
    # normalisation uses the standard CIFAR-10 statistics
    norm = data.normalize(data.train_x[:2])
    c, i, j = 2, 5, 7
    expected = (float(data.train_x[1, c, i, j]) / 255 - CIFAR_MEAN[c]) / CIFAR_STD[c]
    assert norm.dtype == torch.float32 and norm[1, c, i, j].item() == pytest.approx(expected, abs=1e-6)
    # data_root may also name cifar-10-batches-py itself
    inner = load_cifar10(root / "cifar-10-batches-py")
    assert torch.equal(inner.train_x, data.train_x)


def test_cifar_missing_gives_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as err:
        load_cifar10(missing, download=False)
    assert str(missing) in str(err.value) and "download=True" in str(err.value)
    with pytest.raises(FileNotFoundError, match="no data_root"):
        load_cifar10(None)
    partial = tmp_path / "partial" / "cifar-10-batches-py"
    partial.mkdir(parents=True)
    (partial / "test_batch").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar10(partial.parent)
    with pytest.raises(FileNotFoundError):
        VisionTask(vision_cfg(dataset="cifar10", data_root=str(missing)), CPU)
    with pytest.raises(ValueError, match="mnist"):
        load_vision_data("mnist")


def test_download_true_fetches_with_torchvision_then_reads(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    calls = []

    def fake_cifar10(root: str, train: bool = True, download: bool = False) -> None:
        calls.append((root, download))  # stands in for the network fetch + extraction
        write_tiny_cifar(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    data = load_cifar10(tmp_path / "fresh", download=True)
    assert calls == [(str(tmp_path / "fresh"), True)]
    assert data.train_x.shape == (5 * PER_FILE, 3, 32, 32)


def test_download_true_completes_an_incomplete_copy(tmp_path: Path, monkeypatch) -> None:
    """validate skips the file check when download=True, so the loader must then fetch what is missing."""
    import shutil

    partial = tmp_path / "cifar-10-batches-py"
    partial.mkdir()
    (partial / "test_batch").write_bytes(b"")
    calls = []

    def fake_download(root: Path) -> None:
        calls.append(Path(root))
        shutil.rmtree(Path(root) / "cifar-10-batches-py")  # torchvision re-extracts over a bad copy
        write_tiny_cifar(Path(root))

    monkeypatch.setattr("paso_core.tasks.vision_data._download_cifar10", fake_download)
    assert load_cifar10(tmp_path, download=True).train_x.shape == (5 * PER_FILE, 3, 32, 32)
    assert calls == [tmp_path]


def test_digits_split_is_fixed_stratified_and_normalised() -> None:
    a, b = load_digits_data(), load_digits_data()
    assert a.train_x.shape == (1437, 1, 8, 8) and a.test_x.shape == (360, 1, 8, 8)
    assert int(a.train_x.max()) <= 16 and a.pixel_max == 16
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)
    assert torch.bincount(a.test_y, minlength=10).min() >= 35  # stratified: ~36 per class
    norm = a.normalize(a.train_x)
    assert abs(float(norm.mean())) < 1e-4 and abs(float(norm.std()) - 1) < 1e-3


# --------------------------------------------------------------------------- batches
def test_train_batch_is_a_function_of_seed_and_step(digits_task: VisionTask) -> None:
    other = VisionTask(vision_cfg(), CPU)
    x5, y5 = digits_task.train_batch(5)
    x5b, y5b = other.train_batch(5)
    assert torch.equal(x5, x5b) and torch.equal(y5, y5b)
    assert x5.shape == (64, 1, 8, 8) and y5.shape == (64,) and y5.dtype == torch.long
    assert not torch.equal(digits_task.batch_indices(5), digits_task.batch_indices(6))
    reseeded = VisionTask(vision_cfg(seed=1), CPU)
    assert not torch.equal(reseeded.batch_indices(5), digits_task.batch_indices(5))
    # out-of-order access gives the same answer (no hidden iterator state)
    digits_task.train_batch(500)
    assert torch.equal(digits_task.train_batch(5)[0], x5)


def test_each_epoch_visits_every_example_at_most_once(digits_task: VisionTask) -> None:
    spe, bsz = digits_task.steps_per_epoch, digits_task.batch_size
    assert spe == 1437 // 64
    orders = []
    for epoch in range(2):
        idx = torch.cat([digits_task.batch_indices(epoch * spe + k) for k in range(spe)])
        assert idx.numel() == spe * bsz and idx.unique().numel() == idx.numel()
        orders.append(idx)
    assert not torch.equal(orders[0], orders[1])  # a fresh permutation each epoch
    x, y = digits_task.train_batch(spe + 3)
    idx = digits_task.batch_indices(spe + 3)
    assert torch.equal(x, digits_task.data.normalize(digits_task.data.train_x[idx]))
    assert torch.equal(y, digits_task.data.train_y[idx])


def test_batch_larger_than_dataset_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"batch_size=5000.*1437"):
        VisionTask(vision_cfg(batch_size=5000), CPU)


def _crop_candidates(image: torch.Tensor, pad: int, flips: bool) -> list[torch.Tensor]:
    """Every crop (and mirrored crop) of one zero-padded raw image, by plain slicing."""
    h, w = image.shape[-2:]
    padded = F.pad(image, (pad, pad, pad, pad))
    views = [padded, padded.flip(-1)] if flips else [padded]
    return [v[:, dy:dy + h, dx:dx + w] for v in views for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]


def _augmented_raw(task: VisionTask, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw augmented batch, raw originals) of ``step``, via train_batch's own normalisation."""
    x, _ = task.train_batch(step)
    raw = task.data.train_x[task.batch_indices(step)]
    mean = torch.tensor(task.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(task.data.std).view(1, -1, 1, 1)
    back = ((x * std + mean) * task.data.pixel_max).round().to(torch.uint8)
    return back, raw


def test_digits_augmentation_is_seeded_and_never_flips() -> None:
    task = VisionTask(vision_cfg(augment=True), CPU)
    a, b = task.train_batch(7)[0], VisionTask(vision_cfg(augment=True), CPU).train_batch(7)[0]
    assert torch.equal(a, b)
    assert not torch.equal(task.train_batch(7 + task.steps_per_epoch)[0], a)
    aug, raw = _augmented_raw(task, 7)
    assert not torch.equal(aug, raw)  # something moved
    for i in range(aug.shape[0]):
        candidates = _crop_candidates(raw[i], pad=1, flips=False)
        assert any(torch.equal(aug[i], c) for c in candidates), f"sample {i} is not an unflipped crop"


def test_cifar_augmentation_crops_and_flips(cifar_task: VisionTask) -> None:
    assert cifar_task.pad == 4 and cifar_task.flip
    aug, raw = _augmented_raw(cifar_task, 3)
    flipped = 0
    for i in range(aug.shape[0]):
        plain = _crop_candidates(raw[i], pad=4, flips=False)
        mirrored = _crop_candidates(raw[i], pad=4, flips=True)[len(plain):]
        is_plain = any(torch.equal(aug[i], c) for c in plain)
        is_mirrored = any(torch.equal(aug[i], c) for c in mirrored)
        assert is_plain or is_mirrored
        flipped += int(is_mirrored and not is_plain)
    assert 0 < flipped < aug.shape[0]


def test_random_crop_flip_matches_generator_draws() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, pad=1, flip=True, gen=gen)
    gen = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 3, (2,), generator=gen), torch.randint(0, 3, (2,), generator=gen)
    flips = torch.rand(2, generator=gen) < 0.5
    for i in range(2):
        crop = F.pad(x[i], (1, 1, 1, 1))
        crop = crop.flip(-1) if flips[i] else crop
        dxi = 2 - int(dx[i]) if flips[i] else int(dx[i])  # mirrored window of the same offset
        assert torch.equal(out[i], crop[:, int(dy[i]):int(dy[i]) + 4, dxi:dxi + 4])


def test_shards_concatenate_back_to_the_batch(digits_task: VisionTask) -> None:
    batch = digits_task.train_batch(3)
    for world in (1, 2, 4):
        parts = [digits_task.shard(batch, rank, world) for rank in range(world)]
        for j in range(2):
            assert torch.equal(torch.cat([p[j] for p in parts]), batch[j])
    with pytest.raises(ValueError):
        digits_task.shard(batch, 0, 3)


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", ["cnn", "vit", "resnet18"])
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32)])
def test_models_give_logits_and_have_no_batchnorm(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_vision_model(name, channels, size, 10)
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


def test_unknown_model_is_rejected() -> None:
    with pytest.raises(ValueError, match="'mlp'"):
        build_vision_model("mlp", 1, 8, 10)


@pytest.mark.parametrize("name", ["cnn", "vit", "resnet18"])
def test_model_init_is_deterministic_and_leaves_global_rng(name: str) -> None:
    task = VisionTask(vision_cfg(model=name), CPU)
    state = torch.get_rng_state()
    a, b = task.build_model().state_dict(), task.build_model().state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = VisionTask(vision_cfg(model=name, seed=1), CPU).build_model().state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert task.describe()["parameters"] == sum(v.numel() for k, v in a.items())


def test_cifar_task_end_to_end(cifar_task: VisionTask, cifar_root) -> None:
    model = cifar_task.build_model()
    x, y = cifar_task.train_batch(0)
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    loss = cifar_task.loss(model, (x, y), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    metrics = cifar_task.evaluate(model)
    assert set(metrics) == METRIC_KEYS
    info = cifar_task.describe()
    assert info["n_train"] == 100 and info["n_test"] == 20 and info["image_shape"] == [3, 32, 32]
    assert info["source"].endswith("cifar-10-batches-py") and info["classes"] == LABEL_NAMES
    assert cifar_task.items_per_step() == 16


# --------------------------------------------------------------------------- metrics / learning
@pytest.mark.parametrize("training", [True, False])
def test_evaluate_returns_metrics_in_range_and_restores_mode(digits_task: VisionTask, training: bool) -> None:
    model = digits_task.build_model()
    model.train(training)
    metrics = digits_task.evaluate(model)
    assert set(metrics) == METRIC_KEYS and model.training is training
    assert np.isfinite(metrics["test_loss"]) and metrics["test_loss"] > 0
    for key in METRIC_KEYS - {"test_loss"}:
        assert 0.0 <= metrics[key] <= 1.0
    info = digits_task.describe()
    assert info["source"] == "sklearn.datasets.load_digits (bundled)"
    assert info["n_train"] + info["n_test"] == 1797


def test_evaluate_does_not_depend_on_eval_batch_size(digits_task: VisionTask) -> None:
    model = digits_task.build_model()
    small = VisionTask(vision_cfg(eval_batch_size=7), CPU)
    a, b = digits_task.evaluate(model), small.evaluate(model)
    assert a.keys() == b.keys()
    assert all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a)


def test_metrics_match_sklearn() -> None:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    for classes_used in (10, 6):  # 6: some classes absent from both targets and predictions
        y = rng.integers(0, classes_used, 200)
        p = np.where(rng.random(200) < 0.5, y, rng.integers(0, classes_used, 200))
        ours = classification_metrics(torch.from_numpy(p), torch.from_numpy(y), 10)
        prec, rec, f1, _ = precision_recall_fscore_support(y, p, average="macro", zero_division=0)
        assert ours["test_accuracy"] == pytest.approx(accuracy_score(y, p))
        assert ours["test_precision"] == pytest.approx(prec)
        assert ours["test_recall"] == pytest.approx(rec)
        assert ours["test_f1"] == pytest.approx(f1)


def test_a_few_sgd_steps_reduce_the_training_loss(digits_task: VisionTask) -> None:
    model = digits_task.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    probe = [digits_task.train_batch(s) for s in range(3)]

    def probe_loss() -> float:
        with torch.no_grad():
            return sum(float(digits_task.loss(model, b, s)) for s, b in enumerate(probe)) / len(probe)

    before = probe_loss()
    for step in range(50):
        opt.zero_grad()
        digits_task.loss(model, digits_task.train_batch(step), step).backward()
        opt.step()
    after = probe_loss()
    assert after < 0.6 * before, (before, after)
    assert digits_task.evaluate(model)["test_accuracy"] > 0.5  # well above chance (0.1)
