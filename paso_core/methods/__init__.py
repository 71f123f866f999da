"""The method registry: each method file declares its options, its world-size rule and ``train``.

Why a registry: the launcher, the worker, the CLI and the reports never name a method;
adding one is one new file that calls :func:`register` (see README, "Adding a method").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..options import ConfigError, MethodOptions
from ..parallel import ParallelDims

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..context import WorkerContext
    from ..tasks.base import Task

#: The methods shipped with the package, imported on first lookup (each registers itself).
BUILTIN = ("serial", "paso", "optex", "naive_dp", "ddp", "grad_accum", "fsdp", "fsdp2", "tp", "fsdp2_tp", "pp",
           "model_parallel", "pipeoptim", "pipedream", "spectrain", "async_nostash", "local_sgd")


@dataclass(frozen=True)
class MethodSpec:
    """What the core needs to know about a method, and nothing else."""

    name: str
    summary: str                                         # one line, shown by ``--help``
    options: type[MethodOptions]                         # the typed options (defaults, help, checks)
    dims: Callable[["RunConfig"], ParallelDims]          # parallel degrees of a resolved run
    default_nproc: Callable[[Any], int]                  # processes when nproc is not given
    train: Callable[["WorkerContext", "Task"], dict[str, Any]]
    world_rule: str = ""                                 # the world-size rule in words, for errors


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        existing = _REGISTRY[spec.name]
        if existing.train.__module__ != spec.train.__module__:
            raise ValueError(f"method {spec.name!r} is already registered by {existing.train.__module__}")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtins() -> None:
    for name in BUILTIN:
        if name not in _REGISTRY:
            importlib.import_module(f"{__name__}.{name}")


def method_names() -> tuple[str, ...]:
    """Built-in methods in :data:`BUILTIN` order, then any registered later."""
    _load_builtins()
    return tuple(n for n in BUILTIN if n in _REGISTRY) + tuple(n for n in _REGISTRY if n not in BUILTIN)


def get_method(name: Any) -> MethodSpec:
    """The registered method ``name``; an unknown name is an error listing the valid ones."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ConfigError(f"method={name!r} is not valid; choose one of: {', '.join(method_names())}")
    return _REGISTRY[name]


def owners_of(option_name: str) -> list[str]:
    """The methods that declare ``option_name`` (for errors about another method's option)."""
    import dataclasses

    return [n for n in method_names()
            if option_name in {f.name for f in dataclasses.fields(_REGISTRY[n].options)}]
