"""Every option of a run, its default, and the checks done before any process starts.

One dataclass serves the Python API, the CLI and the notebooks, so an option means
the same thing everywhere and bad input is rejected in one place.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METHODS = ("serial", "paso", "optex", "naive_dp", "ddp")
TASKS = ("synthetic", "vision", "text")
FUNCTIONS = ("sphere", "ackley", "rosenbrock")
VISION_DATASETS = ("digits", "cifar10")
VISION_MODELS = ("cnn", "vit", "resnet18")
TEXT_DATASETS = ("pydoc", "wikitext2")
TEXT_MODELS = ("gpt2-tiny", "gpt2-small", "gpt2", "local", "modelscope")
PRETRAINED_MODELS = ("local", "modelscope")  # the others are GPT-2 shapes built from a config
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")  # 'auto': a pretrained checkpoint's own
DEFAULT_CONTEXT = 1024  # GPT-2's
DEFAULT_VOCAB_SIZE = 4096
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")
ADAPTIVITY = ("mean", "median")
#: Which errors feed PASO's adaptive tolerance: the seed's P (the last position against its own
#: guess) or only the P-1 that have a next guess (this repository's earlier rule).
THRESHOLD_ERRORS = ("seed", "next_guess")
PASO_INITS = ("copy", "extrapolate", "trajectory")
PASO_ROLLOUTS = ("auto", "scan", "relay")
DEVICES = ("auto", "cpu", "cuda")

DEFAULT_DATASET = {"vision": "digits", "text": "pydoc"}
DEFAULT_MODEL = {"vision": "cnn", "text": "gpt2-tiny"}
DATASETS_BY_TASK = {"vision": VISION_DATASETS, "text": TEXT_DATASETS}
MODELS_BY_TASK = {"vision": VISION_MODELS, "text": TEXT_MODELS}
DATA_PARALLEL_METHODS = ("naive_dp", "ddp")
ON_DISK_DATASETS = ("cifar10", "wikitext2")  # read from data_root (or downloaded); the others are bundled
FAULT_KINDS = ("raise", "exit", "hang")
#: Options that were once passed inside ``extra={...}``; :meth:`RunConfig.from_dict` still
#: accepts that form (old config.json files, old calls) and maps it onto the fields.
LEGACY_EXTRA = ("n_positions", "vocab_size", "eval_test", "keep_dropout", "attn_implementation",
                "dtype", "modelscope_cache", "inject_fault")


class ConfigError(ValueError):
    """Raised for an option value that cannot work; the message names the valid choices."""


@dataclass
class RunConfig:
    """All options of one training run. Defaults give a small CPU run."""

    method: str = "serial"
    task: str = "synthetic"
    # synthetic task
    function: str = "ackley"
    dim: int = 10_000
    init_range: float = 1.0
    # vision / text data
    dataset: str | None = None
    data_root: str | None = None
    download: bool = False
    model: str | None = None
    augment: bool = True
    eval_batch_size: int = 512
    eval_every: int = 0
    # text task
    block_size: int = 128
    model_dir: str | None = None
    modelscope_id: str = "LLM-Research/Llama-3.2-1B"
    modelscope_cache: str | None = None  # download directory (None: <cache_root>/modelscope)
    n_positions: int = DEFAULT_CONTEXT  # context of the GPT-2 models built from a config
    vocab_size: int = DEFAULT_VOCAB_SIZE  # BPE tokenizer trained for built models
    eval_test: bool = True  # also score the test split, not only validation
    keep_dropout: bool = False  # keep a pretrained model's dropout (zeroed by default)
    attn_implementation: str = "sdpa"
    dtype: str = "float32"  # parameter dtype
    # optimisation
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float | None = None
    grad_clip: float | None = None
    steps: int = 1000
    batch_size: int = 64
    seed: int = 0
    # processes
    nproc: int | None = None
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    device: str = "auto"
    threads_per_worker: int | None = None
    collective_timeout_s: float = 300.0
    stall_timeout_s: float = 900.0
    # PASO
    P: int = 4
    threshold: float = 1e-5
    ema_decay: float = 0.999
    adaptivity: str = "mean"
    threshold_errors: str = "seed"
    init: str = "copy"
    init_trajectory: str | None = None  # torch file of a recorded trajectory (init='trajectory')
    rollout: str = "auto"
    # OptEx
    history: int = 20
    lengthscale: float = 1.0
    noise: float = 1e-3
    tune_every: int = 10
    # bookkeeping
    out_dir: str | None = None
    run_name: str | None = None
    log_every: int = 1
    checkpoint_every: int = 0
    resume: bool = False
    stop_after: int | None = None
    progress: bool = True
    # test hook of the worker: {"rank": r, "kind": "raise" | "exit" | "hang"}
    inject_fault: dict[str, Any] | None = None

    # ------------------------------------------------------------------ derived
    @property
    def world_size(self) -> int:
        """Workers the method runs with (after defaults are resolved)."""
        assert self.nproc is not None
        return self.nproc * self.nnodes

    @property
    def resolved_weight_decay(self) -> float:
        """torch's own defaults: 0 for SGD/Adam, 0.01 for AdamW."""
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.optimizer == "adamw" else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """A config from keyword options; unknown names are an error naming the valid ones."""
        data = _merge_legacy_extra(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown}; valid options are: {', '.join(sorted(names))}"
            )
        if "betas" in data and data["betas"] is not None:
            data["betas"] = tuple(data["betas"])
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _merge_legacy_extra(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with a legacy ``extra={...}`` spread onto the declared options it names.

    Why: every option must be declared and validated, yet old calls and the config.json
    of earlier runs still say ``extra={"n_positions": 32}``.
    """
    data = dict(data)
    if "extra" not in data:
        return data
    extra = data.pop("extra")
    if extra is None:
        return data
    if not isinstance(extra, dict):
        raise ConfigError(f"extra={extra!r} is not valid; pass options as keywords instead")
    unknown = sorted(set(extra) - set(LEGACY_EXTRA))
    if unknown:
        raise ConfigError(f"unknown extra option(s) {unknown}; extra only carries the legacy options "
                          f"{', '.join(LEGACY_EXTRA)} (better: pass them as keywords)")
    for key, value in extra.items():
        if key in data and data[key] != value:
            raise ConfigError(f"{key} is given twice with different values: {key}={data[key]!r} "
                              f"and extra[{key!r}]={value!r}")
        data[key] = value
    return data


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of: {', '.join(choices)}")


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is not valid; it must be an integer >= {minimum}")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not valid; it must be True or False")


def _path_or_none(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name}={value!r} is not valid; give a path as a string (or None)")


def _finite(name: str, value: Any, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        rng = " and ".join(s for s in (lo, hi) if s) or "finite"
        raise ConfigError(f"{name}={value!r} is not valid; it must be a number {rng}")


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill the defaults that depend on other options (dataset, model, nproc)."""
    cfg = dataclasses.replace(cfg)
    if cfg.task in DEFAULT_DATASET and cfg.dataset is None:
        cfg.dataset = DEFAULT_DATASET[cfg.task]
    if cfg.task in DEFAULT_MODEL and cfg.model is None:
        cfg.model = DEFAULT_MODEL[cfg.task]
    if cfg.nproc is None:
        cfg.nproc = {"serial": 1, "paso": cfg.P, "optex": cfg.P}.get(cfg.method, 2)
    return cfg


def validate(cfg: RunConfig) -> RunConfig:
    """Check every option; return the resolved config or raise ConfigError naming the value."""
    _choice("method", cfg.method, METHODS)
    _choice("task", cfg.task, TASKS)
    _positive_int("P", cfg.P)
    if cfg.nproc is not None:
        _positive_int("nproc", cfg.nproc)
    cfg = resolve(cfg)
    if cfg.task == "synthetic":
        _choice("function", cfg.function, FUNCTIONS)
        _positive_int("dim", cfg.dim, 2)
        _finite("init_range", cfg.init_range, 0.0, low_open=True)
    else:
        _choice("dataset", cfg.dataset, DATASETS_BY_TASK[cfg.task])
        _choice("model", cfg.model, MODELS_BY_TASK[cfg.task])
        _positive_int("eval_batch_size", cfg.eval_batch_size)
    _choice("attn_implementation", cfg.attn_implementation, ATTN_IMPLEMENTATIONS)
    _choice("dtype", cfg.dtype, MODEL_DTYPES)
    _bool("eval_test", cfg.eval_test)
    _bool("keep_dropout", cfg.keep_dropout)
    _path_or_none("modelscope_cache", cfg.modelscope_cache)
    if cfg.task == "text":
        _positive_int("block_size", cfg.block_size, 2)
        _positive_int("n_positions", cfg.n_positions)
        _positive_int("vocab_size", cfg.vocab_size, 257)  # byte-level BPE: 256 bytes + eos
        if cfg.model == "local" and not cfg.model_dir:
            raise ConfigError("model='local' needs model_dir=<directory with config.json and weights>")
        if cfg.model_dir and not Path(cfg.model_dir).is_dir():
            raise ConfigError(f"model_dir={cfg.model_dir!r} is not a directory")
        if cfg.dtype == "auto" and cfg.model not in PRETRAINED_MODELS:
            raise ConfigError(f"dtype='auto' keeps a pretrained checkpoint's dtype, so it needs model="
                              f"{' or '.join(map(repr, PRETRAINED_MODELS))}; for model={cfg.model!r} "
                              f"choose one of: {', '.join(d for d in MODEL_DTYPES if d != 'auto')}")
        _check_context(cfg)
    if cfg.task != "synthetic" and not cfg.download:
        problem = dataset_problem(str(cfg.dataset), cfg.data_root)
        if problem is not None:
            raise ConfigError(problem)
    _choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _choice("lr_schedule", cfg.lr_schedule, LR_SCHEDULES)
    _choice("adaptivity", cfg.adaptivity, ADAPTIVITY)
    _choice("threshold_errors", cfg.threshold_errors, THRESHOLD_ERRORS)
    _choice("init", cfg.init, PASO_INITS)
    _check_init_trajectory(cfg)
    _choice("rollout", cfg.rollout, PASO_ROLLOUTS)
    _choice("device", cfg.device, DEVICES)
    _finite("lr", cfg.lr, 0.0, low_open=True)
    _finite("momentum", cfg.momentum, 0.0, 1.0)
    _finite("eps", cfg.eps, 0.0, low_open=True)
    _finite("min_lr_ratio", cfg.min_lr_ratio, 0.0, 1.0)
    if len(cfg.betas) != 2:
        raise ConfigError(f"betas={cfg.betas!r} is not valid; give two numbers in [0, 1)")
    for b in cfg.betas:
        _finite("betas", b, 0.0, 0.999999999)
    _finite("weight_decay", cfg.resolved_weight_decay, 0.0)
    if cfg.grad_clip is not None:
        _finite("grad_clip", cfg.grad_clip, 0.0, low_open=True)
    _positive_int("steps", cfg.steps)
    _positive_int("batch_size", cfg.batch_size)
    _positive_int("warmup_steps", cfg.warmup_steps, 0)
    _positive_int("seed", cfg.seed, 0)
    _positive_int("nproc", cfg.nproc)
    _positive_int("nnodes", cfg.nnodes)
    if cfg.method == "serial" and cfg.world_size != 1:
        raise ConfigError(
            f"method='serial' runs one process, so nproc*nnodes must be 1; got nproc={cfg.nproc}, "
            f"nnodes={cfg.nnodes}. Use nproc=1, or a data-parallel method ({', '.join(DATA_PARALLEL_METHODS)}) "
            "to train on more workers")
    _check_fault(cfg.inject_fault, cfg.world_size)
    _positive_int("log_every", cfg.log_every)
    _positive_int("checkpoint_every", cfg.checkpoint_every, 0)
    _positive_int("eval_every", cfg.eval_every, 0)
    _finite("collective_timeout_s", cfg.collective_timeout_s, 0.0, low_open=True)
    _finite("stall_timeout_s", cfg.stall_timeout_s, 0.0, low_open=True)
    if cfg.stop_after is not None:
        _positive_int("stop_after", cfg.stop_after)
    if cfg.method in ("paso", "optex"):
        if cfg.P > cfg.steps:
            raise ConfigError(f"P={cfg.P} is larger than steps={cfg.steps}; use P <= steps")
        if cfg.world_size != cfg.P:
            raise ConfigError(
                f"method={cfg.method!r} runs one worker per window step, so nproc*nnodes "
                f"must equal P; got nproc={cfg.nproc}, nnodes={cfg.nnodes}, P={cfg.P}"
            )
    if cfg.rollout == "scan" and cfg.optimizer != "adamw" and cfg.resolved_weight_decay > 0:
        raise ConfigError(
            f"rollout='scan' needs weight decay outside the gradient; optimizer={cfg.optimizer!r} with "
            f"weight_decay={cfg.resolved_weight_decay} couples it in: use rollout='relay' or 'auto', "
            "or optimizer='adamw'")
    _finite("threshold", cfg.threshold, 0.0)
    _finite("ema_decay", cfg.ema_decay, 0.0, 1.0)
    if cfg.method == "optex":
        _positive_int("history", cfg.history, 2)
        _finite("lengthscale", cfg.lengthscale, 0.0, low_open=True)
        _finite("noise", cfg.noise, 0.0, low_open=True)
        _positive_int("tune_every", cfg.tune_every, 0)
    if cfg.method in DATA_PARALLEL_METHODS and cfg.task != "synthetic":
        if cfg.batch_size % cfg.world_size:
            raise ConfigError(
                f"batch_size={cfg.batch_size} is not divisible by nproc*nnodes={cfg.world_size}; "
                f"method={cfg.method!r} splits each global batch evenly across workers"
            )
    if cfg.nnodes > 1 and not cfg.rdzv_endpoint:
        raise ConfigError(f"nnodes={cfg.nnodes} needs rdzv_endpoint='host:port' of the rendezvous")
    return cfg


def dataset_problem(dataset: str, data_root: str | None) -> str | None:
    """Why ``dataset`` cannot be read from ``data_root`` without a download, naming the
    missing files and the fix; None when its files are all there (or it needs none).

    Only file checks, no torch: this runs before any worker starts.
    """
    from .tasks import layouts

    if dataset not in ON_DISK_DATASETS:
        return None  # bundled with a dependency (digits, pydoc)
    if not data_root:
        return (f"dataset={dataset!r} needs data_root=<directory holding it> "
                "(or download=True on a machine with a network)")
    if not Path(data_root).expanduser().is_dir():
        return (f"data_root={data_root!r} does not exist; point it at the directory "
                f"holding {dataset}, or pass download=True")
    if dataset == "cifar10":
        problem = layouts.cifar10_problem(data_root)
        if problem is None:
            return None
        return (f"data_root={data_root!r} does not hold CIFAR-10: {problem}. Put {layouts.CIFAR_LAYOUT} "
                "there, or pass download=True on a machine with a network")
    if layouts.find_wikitext_files(Path(data_root).expanduser()) is not None:
        return None
    return f"data_root={data_root!r} does not hold WikiText-2: {layouts.missing_wikitext_message(data_root)}"


def _check_context(cfg: RunConfig) -> None:
    """block_size must fit the model's context, known from the config for built models and
    from ``model_dir/config.json`` for local ones (a downloaded model is checked by the worker)."""
    from .tasks import layouts

    if cfg.model == "modelscope":
        return
    try:
        ctx = cfg.n_positions
        if cfg.model == "local":
            ctx = layouts.context_from(layouts.read_model_config(str(cfg.model_dir)))
        layouts.check_block_size(cfg.block_size, ctx, str(cfg.model))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_init_trajectory(cfg: RunConfig) -> None:
    """init='trajectory' seeds PASO's guesses from a recorded trajectory file, and only it reads one."""
    _path_or_none("init_trajectory", cfg.init_trajectory)
    if cfg.init != "trajectory":
        if cfg.init_trajectory is not None:
            raise ConfigError(f"init_trajectory={cfg.init_trajectory!r} is only read with init='trajectory' "
                              f"(got init={cfg.init!r}); set init='trajectory' or drop init_trajectory")
        return
    if not cfg.init_trajectory:
        raise ConfigError("init='trajectory' needs init_trajectory=<torch file holding the recorded "
                          "parameter trajectory>; or choose init from: copy, extrapolate")
    if not Path(cfg.init_trajectory).is_file():
        raise ConfigError(f"init_trajectory={cfg.init_trajectory!r} is not a file; give the torch file "
                          "holding the recorded parameter trajectory")


def _check_fault(fault: Any, world_size: int) -> None:
    """The worker's fault-injection test hook: which rank fails, and how."""
    if fault is None:
        return
    shape = "{'rank': r, 'kind': 'raise' | 'exit' | 'hang'}"
    if not isinstance(fault, dict) or "rank" not in fault or set(fault) - {"rank", "kind"}:
        raise ConfigError(f"inject_fault={fault!r} is not valid; give {shape}")
    rank = fault["rank"]
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"inject_fault rank={rank!r} is not valid; it must be an integer in "
                          f"0..{world_size - 1}, one of the run's nproc*nnodes={world_size} ranks")
    _choice("inject_fault kind", fault.get("kind", "raise"), FAULT_KINDS)
