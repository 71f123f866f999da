"""The options every run shares, its method's typed options, and the checks before any process starts.

:class:`RunConfig` holds what every method needs (task, data, optimiser, processes,
bookkeeping); the method's own options are a small dataclass declared in its file
(:mod:`paso_core.methods`) and held in ``cfg.options``. The flat keyword form
(``paso_core.run(P=4, ...)``, CLI flags, papermill parameters) is split between the two
by :meth:`RunConfig.from_dict`, so it keeps working while no method adds a branch here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tasks.families import BUILT_MODELS as BUILT_TEXT_MODELS
from .mirror import MIRRORS, check_available as check_mirror_available
from .options import (ConfigError, check_bool, check_choice, check_int, check_number,
                      check_path_or_none, option)

TASKS = ("synthetic", "vision", "text")
FUNCTIONS = ("sphere", "ackley", "rosenbrock")
VISION_DATASETS = ("digits", "cifar10", "tinyimagenet")
VISION_MODELS = ("cnn", "vit", "resnet18", "resnet101", "inception_v3", "resnet20")
BATCHNORM_MODELS = ("resnet20",)  # running statistics outside the parameters (vision_models.py)
TEXT_DATASETS = ("pydoc", "wikitext2", "parquet")
PRETRAINED_MODELS = ("local", "modelscope")  # the others are built from a config (tasks/families.py)
#: GPT-2, Llama and Qwen3-Next sizes built from a config (random init), then the pretrained kinds.
TEXT_MODELS = (*BUILT_TEXT_MODELS, *PRETRAINED_MODELS)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")  # 'auto': a pretrained checkpoint's own
DEFAULT_CONTEXT = 1024  # GPT-2's
DEFAULT_VOCAB_SIZE = 4096
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda")

DEFAULT_DATASET = {"vision": "digits", "text": "pydoc"}
DEFAULT_MODEL = {"vision": "cnn", "text": "gpt2-tiny"}
DATASETS_BY_TASK = {"vision": VISION_DATASETS, "text": TEXT_DATASETS}
MODELS_BY_TASK = {"vision": VISION_MODELS, "text": TEXT_MODELS}
NOT_DOWNLOADABLE = ("tinyimagenet",)  # no loader with a download: the files must be under data_root
ON_DISK_DATASETS = ("cifar10", "tinyimagenet", "wikitext2", "parquet")  # read from data_root (or downloaded); the others are bundled
FAULT_KINDS = ("raise", "exit", "hang", "wrong_grads", "slow_comm")
MIRROR_KINDS = tuple(MIRRORS)  # metrics mirrors (mirror.py); each needs its package installed
#: Options that were once passed inside ``extra={...}``; :meth:`RunConfig.from_dict` still
#: accepts that form (old config.json files, old calls) and maps it onto the fields.
LEGACY_EXTRA = ("n_positions", "vocab_size", "eval_test", "keep_dropout", "attn_implementation",
                "dtype", "modelscope_cache", "inject_fault")


@dataclass
class RunConfig:
    """The options every run shares (defaults give a small CPU run) plus ``options``, the
    method's own typed options (see :func:`paso_core.methods.get_method`)."""

    method: str = option("serial", "training method (each declares its own options; see the list below)")
    task: str = option("synthetic", "what is trained", TASKS)
    # synthetic task
    function: str = option("ackley", "synthetic test function (task=synthetic)", FUNCTIONS)
    dim: int = option(10_000, "dimension of the synthetic function")
    init_range: float = option(1.0, "synthetic start drawn uniformly from [-r, r]^dim")
    # vision / text data
    dataset: str | None = option(None, "dataset (default: digits for vision, pydoc for text)",
                                 VISION_DATASETS + TEXT_DATASETS)
    data_root: str | None = option(None, "directory holding an on-disk dataset (cifar10, tinyimagenet, wikitext2, parquet)")
    download: bool = option(False, "allow downloading a missing dataset or model (needs a network)")
    text_column: str = option("text", "column holding the text (dataset=parquet)")
    loader_workers: int = option(0, "DataLoader workers tokenising upcoming steps ahead (dataset=parquet; "
                                    "0: in the training process)")
    eval_rows: int = option(1000, "first rows of validation and of test that evaluation scores (dataset=parquet)")
    model: str | None = option(None, "model (default: cnn for vision, gpt2-tiny for text)", VISION_MODELS + TEXT_MODELS)
    augment: bool = option(True, "random crop (+ flip on CIFAR-10) of training images")
    label_noise: float = option(0.0, "fraction of training labels replaced by another class, fixed by the seed "
                                "(vision: a harder generalization problem, as in the QSR pilot)")
    eval_batch_size: int = option(512, "examples per evaluation forward")
    eval_every: int = option(0, "evaluate every this many optimizer steps (0: only at the end)")
    # text task
    block_size: int = option(128, "tokens per training sequence")
    model_dir: str | None = option(None, "directory of a local Hugging Face model (model=local)")
    modelscope_id: str = option("LLM-Research/Llama-3.2-1B", "ModelScope model id (model=modelscope)")
    modelscope_cache: str | None = option(None, "ModelScope download directory (None: <cache_root>/modelscope)")
    n_positions: int = option(DEFAULT_CONTEXT, "context of the GPT-2 models built from a config")
    vocab_size: int = option(DEFAULT_VOCAB_SIZE, "BPE vocabulary trained for built models")
    eval_test: bool = option(True, "also score the test split, not only validation")
    keep_dropout: bool = option(False, "keep a pretrained model's dropout (zeroed by default)")
    attn_implementation: str = option("sdpa", "attention kernel of Hugging Face models", ATTN_IMPLEMENTATIONS)
    dtype: str = option("float32", "parameter dtype ('auto': a pretrained checkpoint's own)", MODEL_DTYPES)
    lora: str | dict[str, Any] | None = option(
        None, "LoRA adapters via peft, task=text: 'r=8,alpha=16,targets=attention' (targets: attention, "
              "full_attention, mlp, all-linear, or suffixes like q_proj+v_proj; optional dropout=0)")
    # optimisation
    optimizer: str = option("adam", "optimizer (torch.optim)", OPTIMIZERS)
    lr: float = option(1e-3, "peak learning rate")
    lr_schedule: str = option("constant", "learning-rate schedule after warm-up", LR_SCHEDULES)
    warmup_steps: int = option(0, "linear warm-up steps")
    min_lr_ratio: float = option(0.0, "cosine schedule's final lr as a fraction of lr")
    lr_decay_at: tuple[float, ...] = option(
        (0.5, 0.75), "step schedule: where lr is multiplied by lr_decay_gamma, as fractions of the steps (the "
                     "PipeOptim seed's epochs 40 and 60 of 70: 0.5714 0.8571)")
    lr_decay_gamma: float = option(0.1, "step schedule: the factor at each point of lr_decay_at")
    momentum: float = option(0.9, "momentum of optimizer=momentum")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam/AdamW betas")
    eps: float = option(1e-8, "Adam/AdamW epsilon")
    weight_decay: float | None = option(None, "weight decay (None: torch's default, 0.01 for AdamW, else 0)")
    grad_clip: float | None = option(None, "clip the gradient's global L2 norm to this (None: no clipping)")
    steps: int = option(1000, "optimizer steps T")
    batch_size: int = option(64, "global batch size of one step")
    seed: int = option(0, "seed of initialisation, data order and augmentation")
    # processes
    nproc: int | None = option(None, "worker processes per node (None: the method's default)")
    nnodes: int = option(1, "nodes")
    node_rank: int = option(0, "this node's rank (multi-node runs)")
    rdzv_endpoint: str | None = option(None, "host:port of the rendezvous (multi-node runs)")
    device: str = option("auto", "where workers run (auto: CUDA when available)", DEVICES)
    threads_per_worker: int | None = option(None, "torch threads per worker (None: cores / local workers)")
    collective_timeout_s: float = option(300.0, "a collective waiting longer than this fails the run")
    stall_timeout_s: float = option(900.0, "the launcher kills a run silent for this long")
    # bookkeeping
    out_dir: str | None = option(None, "run directory (None: artifacts/runs/<name>)")
    run_name: str | None = option(None, "run directory name under artifacts/runs")
    log_every: int = option(1, "write a training row every this many iterations")
    checkpoint_every: int = option(0, "checkpoint every this many iterations (0: never)")
    resume: bool = option(False, "continue from the run directory's checkpoint")
    stop_after: int | None = option(None, "stop (with a checkpoint) after this many iterations")
    progress: bool = option(True, "show a progress bar")
    mirror: str | None = option(None, "also send every metrics row to TensorBoard (<run dir>/tensorboard) or an "
                                      "offline W&B run (<run dir>/wandb); needs that package", MIRROR_KINDS)
    inject_fault: dict[str, Any] | None = option(
        None, "test hook of the worker: {'rank': r, 'kind': 'raise' | 'exit' | 'hang' | 'wrong_grads' | 'slow_comm'}")
    #: The method's typed options (set from the method's defaults when not given).
    options: Any = dataclasses.field(default=None, metadata={"help": "", "flag": False})

    def __post_init__(self) -> None:
        if self.options is None and isinstance(self.method, str):
            from .methods import get_method

            try:
                self.options = get_method(self.method).options()
            except ConfigError:
                pass  # an unknown method is reported by validate()

    def __getattr__(self, name: str) -> Any:
        """A method option read as ``cfg.P``: the flat form the API and notebooks use."""
        if name.startswith("__") or name == "options":
            raise AttributeError(name)
        options = self.__dict__.get("options")
        if options is not None and name in {f.name for f in dataclasses.fields(options)}:
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__} has no option {name!r} (method={self.__dict__.get('method')!r})")

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
        """The flat form: the shared options and this method's options side by side."""
        data = {f.name: getattr(self, f.name) for f in shared_fields()}
        if self.options is not None:
            data.update(dataclasses.asdict(self.options))
        return data

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """A config from flat keyword options; unknown names, and options of another method,
        are an error naming the valid ones."""
        from .methods import get_method, owners_of

        data = _merge_legacy_extra(data)
        shared = {f.name for f in shared_fields()}
        method = data.get("method", "serial")
        spec = get_method(method)
        own = {f.name for f in dataclasses.fields(spec.options)}
        unknown = sorted(set(data) - shared - own - {"options"})
        for name in unknown:
            owners = owners_of(name)
            if owners:
                raise ConfigError(
                    f"option {name}={data[name]!r} belongs to method(s) {', '.join(owners)}, not to "
                    f"method={method!r}; {method!r} takes: {', '.join(sorted(own)) or 'no options of its own'}")
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; valid options for method={method!r} are: "
                              f"{', '.join(sorted(shared | own))}")
        common = {k: v for k, v in data.items() if k in shared}
        for name in ("betas", "lr_decay_at"):  # JSON and the CLI give lists
            if common.get(name) is not None:
                common[name] = tuple(common[name])
        options = data.get("options")
        if options is None:
            options = spec.options(**{k: v for k, v in data.items() if k in own})
        return cls(**common, options=options)

    @classmethod
    def from_json(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def shared_fields() -> list[dataclasses.Field]:
    """The options of every run (what is not a method's own option)."""
    return [f for f in dataclasses.fields(RunConfig) if f.name != "options"]


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


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill the defaults that depend on other options (dataset, model, nproc)."""
    from .methods import get_method

    cfg = dataclasses.replace(cfg)
    if cfg.task in DEFAULT_DATASET and cfg.dataset is None:
        cfg.dataset = DEFAULT_DATASET[cfg.task]
    if cfg.task in DEFAULT_MODEL and cfg.model is None:
        cfg.model = DEFAULT_MODEL[cfg.task]
    if cfg.nproc is None:
        cfg.nproc = get_method(cfg.method).default_nproc(cfg.options)
    return cfg


def validate(cfg: RunConfig) -> RunConfig:
    """Check every option; return the resolved config or raise ConfigError naming the value."""
    from .methods import get_method
    from .parallel import DimsError

    spec = get_method(cfg.method)
    if not isinstance(cfg.options, spec.options):
        raise ConfigError(f"options={cfg.options!r} are not {spec.options.__name__} (method={cfg.method!r})")
    check_choice("task", cfg.task, TASKS)
    if cfg.nproc is not None:
        check_int("nproc", cfg.nproc)
    cfg = resolve(cfg)
    cfg.options.check(cfg)
    _check_task(cfg)
    _check_optimizer(cfg)
    _check_processes(cfg)
    try:
        spec.dims(cfg).check_world(cfg.world_size)
    except DimsError as err:
        rule = f" {spec.world_rule};" if spec.world_rule else ":"
        raise ConfigError(f"method={cfg.method!r}{rule} got nproc={cfg.nproc}, nnodes={cfg.nnodes}. {err}") from None
    _check_fault(cfg.inject_fault, cfg.world_size)
    _check_mirror(cfg.mirror)
    return cfg


def _check_mirror(mirror: Any) -> None:
    """A known mirror whose package is installed: a missing one fails here, not in a worker."""
    if mirror is None:
        return
    check_choice("mirror", mirror, MIRROR_KINDS)
    check_mirror_available(mirror)


def _check_task(cfg: RunConfig) -> None:
    if cfg.task == "synthetic":
        check_choice("function", cfg.function, FUNCTIONS)
        check_int("dim", cfg.dim, 2)
        check_number("init_range", cfg.init_range, 0.0, low_open=True)
    else:
        check_choice("dataset", cfg.dataset, DATASETS_BY_TASK[cfg.task])
        check_choice("model", cfg.model, MODELS_BY_TASK[cfg.task])
        check_int("eval_batch_size", cfg.eval_batch_size)
    check_number("label_noise", cfg.label_noise, 0.0, 1.0)
    if cfg.label_noise and cfg.task != "vision":
        raise ConfigError(f"label_noise={cfg.label_noise} corrupts class labels, so it needs task='vision' "
                          f"(got task={cfg.task!r}); leave it at 0")
    check_choice("attn_implementation", cfg.attn_implementation, ATTN_IMPLEMENTATIONS)
    check_choice("dtype", cfg.dtype, MODEL_DTYPES)
    check_bool("eval_test", cfg.eval_test)
    check_bool("keep_dropout", cfg.keep_dropout)
    check_path_or_none("modelscope_cache", cfg.modelscope_cache)
    if cfg.task == "text":
        check_int("block_size", cfg.block_size, 2)
        check_int("n_positions", cfg.n_positions)
        check_int("vocab_size", cfg.vocab_size, 257)  # byte-level BPE: 256 bytes + eos
        if cfg.model == "local" and not cfg.model_dir:
            raise ConfigError("model='local' needs model_dir=<directory with config.json and weights>")
        if cfg.model_dir and not Path(cfg.model_dir).is_dir():
            raise ConfigError(f"model_dir={cfg.model_dir!r} is not a directory")
        if cfg.dtype == "auto" and cfg.model not in PRETRAINED_MODELS:
            raise ConfigError(f"dtype='auto' keeps a pretrained checkpoint's dtype, so it needs model="
                              f"{' or '.join(map(repr, PRETRAINED_MODELS))}; for model={cfg.model!r} "
                              f"choose one of: {', '.join(d for d in MODEL_DTYPES if d != 'auto')}")
        _check_context(cfg)
    _check_lora(cfg)
    if cfg.task == "text" and cfg.dataset == "parquet":
        _check_parquet_options(cfg)
    if cfg.task != "synthetic" and (not cfg.download or cfg.dataset in NOT_DOWNLOADABLE):
        problem = dataset_problem(str(cfg.dataset), cfg.data_root, cfg.text_column)
        if problem is not None:
            raise ConfigError(problem)


def _check_parquet_options(cfg: RunConfig) -> None:
    if not isinstance(cfg.text_column, str) or not cfg.text_column:
        raise ConfigError(f"text_column={cfg.text_column!r} is not valid; give the name of the parquet column "
                          "holding the text (default 'text')")
    check_int("loader_workers", cfg.loader_workers, 0)
    check_int("eval_rows", cfg.eval_rows)


def _check_lora(cfg: RunConfig) -> None:
    """A malformed ``lora`` spec, or targets matching no module of the chosen model (built
    on the meta device), fail here; adapters exist for the text models only."""
    if cfg.lora is None:
        return
    from .tasks import lora

    spec = lora.parse_lora(cfg.lora)
    if cfg.task != "text":
        raise ConfigError(f"lora={cfg.lora!r} needs task='text' (got task={cfg.task!r}): adapters are injected "
                          "into the Linear/Conv1D layers of the Hugging Face text models; use lora=None")
    if cfg.model != "modelscope":  # not on disk yet: the worker checks it after the download
        lora.check_lora_targets(cfg, spec)


def _check_optimizer(cfg: RunConfig) -> None:
    check_choice("optimizer", cfg.optimizer, OPTIMIZERS)
    check_choice("lr_schedule", cfg.lr_schedule, LR_SCHEDULES)
    check_number("lr", cfg.lr, 0.0, low_open=True)
    check_number("momentum", cfg.momentum, 0.0, 1.0)
    check_number("eps", cfg.eps, 0.0, low_open=True)
    check_number("min_lr_ratio", cfg.min_lr_ratio, 0.0, 1.0)
    check_number("lr_decay_gamma", cfg.lr_decay_gamma, 0.0, 1.0, low_open=True)
    points = list(cfg.lr_decay_at)
    if any(not isinstance(f, int | float) or not 0 < f < 1 for f in points) or points != sorted(set(points)):
        raise ConfigError(f"lr_decay_at={cfg.lr_decay_at!r} is not valid; give increasing fractions of the steps "
                          "in (0, 1), e.g. (0.5, 0.75)")
    if len(cfg.betas) != 2:
        raise ConfigError(f"betas={cfg.betas!r} is not valid; give two numbers in [0, 1)")
    for b in cfg.betas:
        check_number("betas", b, 0.0, 0.999999999)
    check_number("weight_decay", cfg.resolved_weight_decay, 0.0)
    if cfg.grad_clip is not None:
        check_number("grad_clip", cfg.grad_clip, 0.0, low_open=True)
    check_int("steps", cfg.steps)
    check_int("batch_size", cfg.batch_size)
    check_int("warmup_steps", cfg.warmup_steps, 0)
    check_int("seed", cfg.seed, 0)


def _check_processes(cfg: RunConfig) -> None:
    check_choice("device", cfg.device, DEVICES)
    check_int("nproc", cfg.nproc)
    check_int("nnodes", cfg.nnodes)
    check_int("log_every", cfg.log_every)
    check_int("checkpoint_every", cfg.checkpoint_every, 0)
    check_int("eval_every", cfg.eval_every, 0)
    check_number("collective_timeout_s", cfg.collective_timeout_s, 0.0, low_open=True)
    check_number("stall_timeout_s", cfg.stall_timeout_s, 0.0, low_open=True)
    if cfg.stop_after is not None:
        check_int("stop_after", cfg.stop_after)
    if cfg.nnodes > 1 and not cfg.rdzv_endpoint:
        raise ConfigError(f"nnodes={cfg.nnodes} needs rdzv_endpoint='host:port' of the rendezvous")
    _check_nodes(cfg)


_ENDPOINT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):([0-9]{1,5})")


def _check_nodes(cfg: RunConfig) -> None:
    """node_rank and rdzv_endpoint, checked here because a bad one otherwise surfaces as a
    torchrun traceback, or as nodes waiting for a peer that never comes until the timeout."""
    check_int("node_rank", cfg.node_rank, 0)
    if cfg.node_rank >= cfg.nnodes:
        raise ConfigError(f"node_rank={cfg.node_rank} is not valid with nnodes={cfg.nnodes}; give every node its "
                          f"own rank in 0..{cfg.nnodes - 1} (node_rank=0 hosts the rendezvous)")
    if cfg.rdzv_endpoint in (None, ""):  # one node, standalone
        return
    match = _ENDPOINT.fullmatch(cfg.rdzv_endpoint) if isinstance(cfg.rdzv_endpoint, str) else None
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise ConfigError(f"rdzv_endpoint={cfg.rdzv_endpoint!r} is not valid; give 'host:port' of the node with "
                          "node_rank=0 and a free port in 1..65535, e.g. 'node0:29400' or '[fd00::1]:29400'")


def check_batch_splits(cfg: RunConfig, parts: int, why: str) -> None:
    """A global batch must split evenly into ``parts`` (data-parallel shards, micro-batches)."""
    if cfg.task != "synthetic" and cfg.batch_size % parts:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by {parts} ({why}); "
                          f"method={cfg.method!r} splits each global batch evenly")


def check_window(cfg: RunConfig, P: int) -> None:
    """A window of ``P`` steps must fit the run, and each step must be a function of the
    parameters alone: BatchNorm's running statistics are updated by every forward, so
    workers evaluating guessed iterates would leave the fixed point undefined."""
    if P > cfg.steps:
        raise ConfigError(f"P={P} is larger than steps={cfg.steps}; use P <= steps")
    if cfg.task == "vision" and cfg.model in BATCHNORM_MODELS:
        raise ConfigError(f"model={cfg.model!r} uses BatchNorm, whose running statistics are not a function of "
                          f"the parameters, so method={cfg.method!r} (steps solved in parallel) has no fixed "
                          f"point to find; choose a model without BatchNorm: "
                          f"{', '.join(m for m in VISION_MODELS if m not in BATCHNORM_MODELS)}")


def dataset_problem(dataset: str, data_root: str | None, text_column: str = "text") -> str | None:
    """Why ``dataset`` cannot be read from ``data_root`` without a download, naming the
    missing files and the fix; None when its files are all there (or it needs none).

    Only file checks, no torch: this runs before any worker starts.
    """
    from .tasks import layouts

    if dataset not in ON_DISK_DATASETS:
        return None  # bundled with a dependency (digits, pydoc)
    if dataset == "parquet":  # reads parquet footers (schema, row counts), never data
        from .tasks.parquet_data import layout_problem

        return layout_problem(data_root, text_column)
    download = "" if dataset in NOT_DOWNLOADABLE else " (or download=True on a machine with a network)"
    if not data_root:
        return f"dataset={dataset!r} needs data_root=<directory holding it>{download}"
    if not Path(data_root).expanduser().is_dir():
        return f"data_root={data_root!r} does not exist; point it at the directory holding {dataset}{download}"
    if dataset == "cifar10":
        problem = layouts.cifar10_problem(data_root)
        if problem is None:
            return None
        return (f"data_root={data_root!r} does not hold CIFAR-10: {problem}. Put {layouts.CIFAR_LAYOUT} "
                "there, or pass download=True on a machine with a network")
    if dataset == "tinyimagenet":
        problem = layouts.tinyimagenet_problem(data_root)
        if problem is None:
            return None
        return f"data_root={data_root!r} does not hold Tiny-ImageNet: {problem}. Put {layouts.TINY_LAYOUT} there"
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


def _check_fault(fault: Any, world_size: int) -> None:
    """The worker's fault-injection test hook: which rank fails, and how."""
    if fault is None:
        return
    shape = "{'rank': r, 'kind': " + " | ".join(repr(k) for k in FAULT_KINDS) + "}"
    if not isinstance(fault, dict) or "rank" not in fault or set(fault) - {"rank", "kind"}:
        raise ConfigError(f"inject_fault={fault!r} is not valid; give {shape}")
    rank = fault["rank"]
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"inject_fault rank={rank!r} is not valid; it must be an integer in "
                          f"0..{world_size - 1}, one of the run's nproc*nnodes={world_size} ranks")
    check_choice("inject_fault kind", fault.get("kind", "raise"), FAULT_KINDS)
