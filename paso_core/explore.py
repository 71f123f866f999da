"""Explore recorded runs interactively: the logic behind ``notebooks/explore.ipynb``.

Why a module: the notebook is a thin layer of widgets; what it shows (which runs exist,
which sweeps they span, which runs a selection keeps, the figure) is decided here, so it is
unit-tested without a browser or a kernel (``tests/test_explore.py``), and the browser test
(``tests/test_browser.py``) only checks that the page wires it up.

Everything is read from run directories (``config.json``, ``summary.json``, ``metrics.csv``
or ``metrics.jsonl``, see :mod:`paso_core.runs`), found anywhere below a root, so runs that
notebooks write into sub-folders (``runs/paso_placement/...``) are found too. The sweeps are
discovered, not hard-coded: a :data:`SWEEP_KEYS` option becomes a slider when the recorded
configs hold at least two values of it.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from .plot_runs import X_COLUMNS, X_LABELS, axis_label, series
from .runs import RunResult, read_metrics, read_metrics_rows

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

#: Options that can be swept, in the order their sliders appear (the methods' own option names:
#: PASO's ``P``/``threshold``/``ema_decay``, local SGD's ``H_base``, gradient accumulation's
#: ``micro_batches``, pipelines' ``microbatches``), then the shared ones.
SWEEP_KEYS = ("P", "threshold", "ema_decay", "H_base", "H", "micro_batches", "microbatches", "stages",
              "nproc", "batch_size", "lr", "steps", "seed")
#: The slider position that keeps every value.
ANY = "any"
#: Metrics offered first when present (the rest follow alphabetically).
PREFERRED_METRICS = ("train_loss", "eval_test_accuracy", "eval_test_loss", "eval_val_loss", "eval_val_ppl",
                     "threshold", "accepted", "time_iteration_s")
#: Columns that are never a metric to plot (row kind, the x axes themselves).
NOT_METRICS = {"kind", *X_COLUMNS.values()}
#: At most this many lines in one figure (the title then says "first 16 of N runs").
MAX_LINES = 16
#: The small run the notebook's button launches (``paso_core.run`` keywords), per scale.
#: Why so many steps of a 200k-dimensional Ackley: starting the workers takes ~8 s on 2 CPU cores,
#: then these steps take a few seconds more, long enough for the bar to be seen moving.
NEW_RUN = {"method": "paso", "task": "synthetic", "function": "ackley", "dim": 200_000, "P": 2,
           "steps": 300, "progress": False}
NEW_RUN_STEPS = {"smoke": 200, "default": 300, "paper": 1000}


# ----------------------------------------------------------------------------- runs
@dataclass
class Run:
    """A run directory found below the root: its name (path relative to the root), config and
    summary; the metrics are read on first use."""

    path: Path
    name: str
    config: dict[str, Any]
    summary: dict[str, Any]
    _metrics: Any = field(default=None, repr=False, compare=False)

    @property
    def method(self) -> str:
        return str(self.config.get("method", self.summary.get("method", "?")))

    @property
    def task(self) -> str:
        return str(self.config.get("task", self.summary.get("task", "?")))

    @property
    def metrics(self) -> "pd.DataFrame":
        if self._metrics is None:
            self._metrics = read_metrics(self.path)
        return self._metrics

    def columns(self) -> list[str]:
        """The metrics columns, read from the CSV header (or the first JSONL row) only."""
        csv = self.path / "metrics.csv"
        if csv.exists() and csv.stat().st_size:
            with csv.open() as handle:
                return [c.strip() for c in handle.readline().split(",") if c.strip()]
        rows = read_metrics_rows(self.path)
        return list(rows[0]) if rows else []

    def as_result(self) -> RunResult:
        return RunResult(path=self.path, summary=self.summary, metrics=self.metrics, config=self.config)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def discover_runs(root: str | Path | None) -> list[Run]:
    """Every run directory (one holding ``config.json``) anywhere below ``root``, sorted by
    name; [] when ``root`` is None or does not exist. A run without metrics rows is kept
    (its summary still describes it) but draws no line."""
    if root is None:
        return []
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for config in sorted(root.rglob("config.json")):
        path = config.parent
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        cfg = _read_json(config)
        if not cfg:
            continue
        name = path.relative_to(root).as_posix() if path != root else path.name
        runs.append(Run(path=path, name=name, config=cfg, summary=_read_json(path / "summary.json")))
    return runs


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool) and value is not None


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, float(value)) if isinstance(value, (int, float)) else (1, str(value))


def sweeps(runs: Iterable[Run], keys: Sequence[str] = SWEEP_KEYS) -> dict[str, list[Any]]:
    """``{option: sorted distinct values}`` of every ``keys`` option that the runs' configs
    record with at least two values (one value is no sweep), in ``keys`` order."""
    found: dict[str, set[Any]] = {k: set() for k in keys}
    for run in runs:
        for key in keys:
            value = run.config.get(key)
            if _scalar(value) and not (isinstance(value, float) and math.isnan(value)):
                found[key].add(value)
    return {k: sorted(v, key=_sort_key) for k, v in found.items() if len(v) >= 2}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def filter_runs(runs: Iterable[Run], *, task: str | None = None, methods: Iterable[str] | None = None,
                sweep: Mapping[str, Any] | None = None) -> list[Run]:
    """The runs of ``task`` (None: any), of one of ``methods`` (None: any; empty: none), and
    whose config holds each ``sweep`` value (:data:`ANY` or None keeps every value; a run
    without that option is dropped once a value is chosen)."""
    wanted = None if methods is None else set(methods)
    chosen = {k: v for k, v in (sweep or {}).items() if v is not None and v != ANY}
    kept = []
    for run in runs:
        if task is not None and run.task != task:
            continue
        if wanted is not None and run.method not in wanted:
            continue
        if all(k in run.config and _same(run.config[k], v) for k, v in chosen.items()):
            kept.append(run)
    return kept


def tasks(runs: Iterable[Run]) -> list[str]:
    """The tasks, the one with most runs first."""
    return [t for t, _ in Counter(r.task for r in runs).most_common()]


def methods(runs: Iterable[Run]) -> list[str]:
    return sorted({r.method for r in runs})


def metric_names(runs: Iterable[Run]) -> list[str]:
    """The metrics columns of the runs, :data:`PREFERRED_METRICS` first, then alphabetical."""
    columns = {c for r in runs for c in r.columns()} - NOT_METRICS
    preferred = [c for c in PREFERRED_METRICS if c in columns]
    return preferred + sorted(columns - set(preferred))


@dataclass
class Selection:
    """What the explorer shows: a task, methods, sweep values, a metric against an x axis."""

    task: str | None = None
    methods: list[str] | None = None
    sweep: dict[str, Any] = field(default_factory=dict)
    metric: str = "train_loss"
    x: str = "step"
    runs: list[str] | None = None  # run names picked among those the filters keep (None: all)

    def apply(self, runs: Iterable[Run]) -> list[Run]:
        kept = filter_runs(runs, task=self.task, methods=self.methods, sweep=self.sweep)
        if self.runs is not None:
            picked = set(self.runs)
            kept = [r for r in kept if r.name in picked]
        return kept


def default_selection(runs: Sequence[Run], metric: str | None = None) -> Selection:
    """The task with most runs, all its methods, every sweep value, ``metric`` when given and
    recorded (else the first of :func:`metric_names`)."""
    task_list = tasks(runs)
    task = task_list[0] if task_list else None
    of_task = filter_runs(runs, task=task)
    names = metric_names(of_task)
    chosen = metric if metric in names else (names[0] if names else (metric or "train_loss"))
    return Selection(task=task, methods=methods(of_task), metric=chosen)


# ----------------------------------------------------------------------------- tables and figures
SUMMARY_COLUMNS = ("status", "steps", "iterations", "speedup", "final_train_loss", "final_test_accuracy",
                   "final_test_loss", "final_val_ppl")


def runs_table(runs: Sequence[Run], keys: Sequence[str] | None = None) -> "pd.DataFrame":
    """One row per run: name, task, method, the swept options and the summary's headline numbers."""
    import pandas as pd

    keys = list(sweeps(runs)) if keys is None else list(keys)
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "task": run.task, "method": run.method}
        row.update({k: run.config.get(k) for k in keys})
        row.update({k: run.summary.get(k) for k in SUMMARY_COLUMNS if k in run.summary})
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def labels(runs: Sequence[Run]) -> list[str]:
    """``<method> k=v ...`` with the swept options (:func:`sweeps`) that differ among ``runs``;
    the run directory's name is added where two labels would still be the same."""
    keys = list(sweeps(runs))
    out = [" ".join([run.method] + [f"{k}={_fmt(run.config[k])}" for k in keys if k in run.config])
           for run in runs]
    counts = Counter(out)
    return [f"{label} ({run.path.name})" if counts[label] > 1 else label for label, run in zip(out, runs)]


def make_figure(runs: Sequence[Run], metric: str, x: str = "step", *, title: str | None = None) -> "Figure":
    """``metric`` of every run against ``x`` (one of :data:`paso_core.plot_runs.X_COLUMNS`), at
    most :data:`MAX_LINES` lines; an empty selection draws a figure that says so. A pyplot-free
    ``Figure``: nothing is left open, and the notebook's backend is not touched."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=90)
    ax = fig.add_subplot()
    shown = list(runs)[:MAX_LINES]
    drawn = 0
    for run, label in zip(shown, labels(shown)):
        xs, ys = series(run.metrics, metric, x if x in X_COLUMNS else "step")
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no recorded run matches this selection" if not runs
                else f"no {metric!r} values in the {len(runs)} selected run(s)",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.set_ylabel(axis_label(metric))
    more = f" (first {MAX_LINES} of {len(runs)} runs)" if len(runs) > MAX_LINES else ""
    ax.set_title((title or f"{metric}: {drawn} run(s)") + more, fontsize=10)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def figure_png(fig: "Figure") -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def selection_title(selection: Selection) -> str:
    chosen = ", ".join(f"{k}={v}" for k, v in selection.sweep.items() if v not in (None, ANY))
    return f"{selection.metric} ({selection.task or 'no task'}{'; ' + chosen if chosen else ''})"


def selection_png(runs: Sequence[Run], selection: Selection) -> bytes:
    """The PNG of :func:`make_figure` for what ``selection`` keeps of ``runs``."""
    kept = selection.apply(runs)
    title = f"{selection_title(selection)}: {len(kept)} run(s)"
    return figure_png(make_figure(kept, selection.metric, selection.x, title=title))


# ----------------------------------------------------------------------------- a new run
def steps_done(run_dir: Path) -> int:
    """The largest ``steps_done`` streamed so far to ``run_dir/metrics.jsonl`` (0 before any)."""
    done = 0
    for row in read_metrics_rows(Path(run_dir)):
        value = row.get("steps_done")
        if isinstance(value, (int, float)) and math.isfinite(value):
            done = max(done, int(value))
    return done


def new_run_options(scale: str | None, **overrides: Any) -> dict[str, Any]:
    """The button's run: :data:`NEW_RUN` with the scale's step count, then ``overrides``."""
    options = dict(NEW_RUN, steps=NEW_RUN_STEPS.get(scale or "default", NEW_RUN["steps"]))
    options.update(overrides)
    return options


def launch_with_progress(run_dir: str | Path, on_progress: Callable[[int, int], None], *,
                         runner: Callable[..., Any] | None = None, poll_s: float = 0.3,
                         **options: Any) -> Any:
    """Run ``runner(**options, out_dir=run_dir)`` (default :func:`paso_core.run`) in a thread
    and call ``on_progress(steps done, steps)`` from the run's streamed metrics while it runs,
    and once more at the end; returns the runner's result (its exception is raised here).

    Why poll the run directory: the run happens in worker processes, and ``metrics.jsonl`` is
    what they stream; a bar fed from it shows what has really been recorded."""
    if runner is None:
        from . import run as runner
    run_dir = Path(run_dir)
    total = int(options.get("steps", NEW_RUN["steps"]))
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = runner(**options, out_dir=str(run_dir))
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="paso-explore-run", daemon=True)
    thread.start()
    last = -1
    while thread.is_alive():
        done = steps_done(run_dir)
        if done != last:
            on_progress(done, total)
            last = done
        thread.join(poll_s)
    if "error" in outcome:
        raise outcome["error"]
    on_progress(max(steps_done(run_dir), total if outcome.get("result") is not None else 0), total)
    return outcome.get("result")


# ----------------------------------------------------------------------------- widgets
def widgets_module() -> Any | None:
    """ipywidgets when a live frontend shows the notebook (:func:`paso_core.report.widgets_module`),
    also under Voilà (its kernels carry ``VOILA_*`` variables, not Jupyter Server's session
    name); None headless (papermill, nbmake), where the notebook shows static views."""
    from . import report

    widgets = report.widgets_module()
    if widgets is not None or os.environ.get("PASO_WIDGETS") == "0":
        return widgets
    if not any(k.startswith("VOILA_") for k in os.environ):
        return None
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


class Explorer:
    """The widgets: task, methods, one slider per discovered sweep, the runs they keep, metric
    and x axis, an ``Image`` of the figure, and a button launching a small run with a progress
    bar. Built from an ipywidgets module (``widgets``), so tests pass the real one without a
    frontend. Why an ``Image`` fed PNG bytes, not an ``Output`` widget: headless executors
    emulate ``Output`` widgets over comm messages and were seen to stall on them (see
    :func:`paso_core.experiments.cifar.sweep_explorer`)."""

    def __init__(self, runs: Sequence[Run], widgets: Any, *, metric: str | None = None,
                 new_run_dir: str | Path | None = None, new_run: Mapping[str, Any] | None = None,
                 runner: Callable[..., Any] | None = None) -> None:
        self.w = widgets
        self.runs = list(runs)
        self.new_run_dir = Path(new_run_dir) if new_run_dir is not None else None
        self.new_run = dict(new_run or new_run_options(None))
        self.runner = runner
        self.launched = 0
        self.selection = default_selection(self.runs, metric)
        layout = widgets.Layout(width="420px")
        self.task = widgets.Dropdown(options=tasks(self.runs), value=self.selection.task, description="task",
                                     layout=layout)
        self.methods = widgets.SelectMultiple(description="methods", rows=4, layout=layout)
        self.sliders: dict[str, Any] = {}
        self.slider_box = widgets.VBox()
        self.run_list = widgets.SelectMultiple(description="runs", rows=6, layout=widgets.Layout(width="640px"))
        self.metric = widgets.Dropdown(description="metric", layout=layout)
        self.x = widgets.Dropdown(options=list(X_COLUMNS), value="step", description="x axis", layout=layout)
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="900px"))
        self.image.add_class("paso-explore-plot")
        self.status = widgets.HTML()
        self.status.add_class("paso-explore-status")
        self.button = widgets.Button(description="launch a small PASO run", icon="play",
                                     layout=widgets.Layout(width="240px"))
        self.button.add_class("paso-explore-launch")
        self.progress = widgets.IntProgress(value=0, min=0, max=int(self.new_run.get("steps", 1)),
                                            description="new run", layout=widgets.Layout(width="420px"))
        self.progress.add_class("paso-explore-progress")
        self.run_status = widgets.HTML()
        self._quiet = False
        self._refresh_task()
        self.task.observe(self._on_task, names="value")
        self.methods.observe(self._on_filters, names="value")
        self.run_list.observe(self._on_draw, names="value")
        self.metric.observe(self._on_draw, names="value")
        self.x.observe(self._on_draw, names="value")
        self.button.on_click(self._on_launch)

    # -- building
    def view(self) -> Any:
        w = self.w
        return w.VBox([w.HBox([w.VBox([self.task, self.methods, self.metric, self.x]), self.slider_box]),
                       self.run_list, self.status, self.image,
                       w.HBox([self.button, self.progress]), self.run_status])

    def _refresh_task(self) -> None:
        """Options of the method list, sliders and metrics for the chosen task, every method
        selected; a slider keeps its value while the task's runs still hold it."""
        self._quiet = True
        try:
            of_task = filter_runs(self.runs, task=self.task.value)
            self.methods.options = methods(of_task)
            self.methods.value = tuple(methods(of_task))
            names = metric_names(of_task) or [self.selection.metric]
            keep = self.metric.value if self.metric.value in names else (
                self.selection.metric if self.selection.metric in names else names[0])
            self.metric.options = names
            self.metric.value = keep
            previous = {k: s.value for k, s in self.sliders.items()}
            self.sliders = {}
            for key, values in sweeps(of_task).items():
                value = previous.get(key, ANY)
                value = value if any(_same(value, v) for v in values) else ANY
                slider = self.w.SelectionSlider(options=[ANY, *values], value=value, description=key,
                                                continuous_update=False, layout=self.w.Layout(width="420px"))
                slider.add_class(f"paso-explore-slider-{key}")
                slider.observe(self._on_filters, names="value")
                self.sliders[key] = slider
            self.slider_box.children = tuple(self.sliders.values())
        finally:
            self._quiet = False
        self._on_filters(None)

    def _current(self) -> Selection:
        return Selection(task=self.task.value, methods=list(self.methods.value),
                         sweep={k: s.value for k, s in self.sliders.items()},
                         metric=self.metric.value or self.selection.metric, x=self.x.value,
                         runs=list(self.run_list.value))

    # -- events
    def _on_task(self, change: Any) -> None:
        self._refresh_task()

    def _on_filters(self, change: Any) -> None:
        """New filters: the run list holds what they keep, all picked, and the figure redraws."""
        if self._quiet:
            return
        sel = self._current()
        kept = filter_runs(self.runs, task=sel.task, methods=sel.methods, sweep=sel.sweep)
        self._quiet = True
        try:
            self.run_list.options = [r.name for r in kept]
            self.run_list.value = tuple(r.name for r in kept)
        finally:
            self._quiet = False
        self.redraw()

    def _on_draw(self, change: Any) -> None:
        if not self._quiet:
            self.redraw()

    def redraw(self) -> None:
        self.selection = self._current()
        kept = self.selection.apply(self.runs)
        self.image.value = selection_png(self.runs, self.selection)
        self.status.value = (f"<b>{len(kept)}</b> of {len(self.runs)} recorded run(s) shown"
                             + ("" if self.runs else ": none recorded yet; launch one below"))

    def _on_launch(self, button: Any) -> None:
        self.launch()

    def launch(self) -> Run | None:
        """Run :attr:`new_run` into ``new_run_dir/explore-<n>``, the bar following its metrics;
        the finished run joins the list (its task selected) and the figure."""
        import tempfile

        base = self.new_run_dir or Path(tempfile.mkdtemp(prefix="paso_explore_"))
        self.launched += 1
        run_dir = base / f"explore-{self.launched}-{time.strftime('%H%M%S')}"
        self.button.disabled = True
        self.progress.value = 0
        self.progress.bar_style = "info"
        self.run_status.value = f"running {self.new_run} into <code>{run_dir}</code> ..."

        def on_progress(done: int, total: int) -> None:
            self.progress.max = max(total, 1)
            self.progress.value = min(done, total)

        try:
            launch_with_progress(run_dir, on_progress, runner=self.runner, **self.new_run)
        except Exception as err:  # shown in the page; the explorer stays usable
            self.progress.bar_style = "danger"
            self.run_status.value = f"the run failed: {type(err).__name__}: {err}"
            return None
        finally:
            self.button.disabled = False
        self.progress.bar_style = "success"
        run = Run(path=run_dir, name=f"new/{run_dir.name}", config=_read_json(run_dir / "config.json"),
                  summary=_read_json(run_dir / "summary.json"))
        self.runs.append(run)
        self.run_status.value = f"done: <code>{run_dir}</code>, {run.summary.get('status', '?')}"
        self.task.options = tasks(self.runs)
        if self.task.value != run.task:
            self.task.value = run.task  # observed: refreshes the lists and redraws
        else:
            self._refresh_task()
        return run
