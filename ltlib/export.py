"""Runs to TensorBoard, MLflow or CSV: after the fact (``ltlib export RUN … --to …``) or live, as
``train(callbacks=[…])`` loggers that write the same.

What a run gives each of them:

- parameters: its config, flattened (``loss_params.gamma``; lists and null as JSON text);
- per-epoch metrics, at step = epoch (1-based): every number of a metrics.jsonl line but the epoch
  (``loss``, ``lr``, ``balanced_accuracy`` …, lists and objects by index and key:
  ``per_class_accuracy/3``, ``per_domain_accuracy/red``);
- final metrics, at step = the run's epochs: the numbers of eval.json named the same way under
  ``final/`` (``final/balanced_accuracy``, ``final/per_class_accuracy/3``, ``final/class_counts/3``).

TensorBoard: one folder of event files per run, ``DEST/<run id>`` (scalars stored as float64, so
they read back exactly; parameters in the HParams tab). MLflow: one MLflow run per run in the
experiment ``ltlib``, named by the run id and tagged ``ltlib.run_id``; ``DEST`` is a folder (a local
file store) or a tracking URI. CSV: ``DEST/history.csv`` (a row per run and epoch) and
``DEST/runs.csv`` (a row per run: parameters and final metrics), rewritten for the runs given.
A run already in a TensorBoard folder or MLflow experiment is skipped, so exports can be repeated.

MLflow 3 keeps its local file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``: exporting
to a folder sets it to ``true`` for the process (unless set), and a reader needs it too
(``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri DEST``).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltlib.runs import Run

if TYPE_CHECKING:
    from types import TracebackType

    from ltlib.train import Event

TARGETS = ("tensorboard", "mlflow", "csv")
DEFAULT_DEST = {"tensorboard": "tensorboard", "mlflow": "mlruns", "csv": "csv"}
EXPERIMENT = "ltlib"
# Characters MLflow allows in a metric name; used for every target so the names agree.
_UNSAFE = re.compile(r"[^\w\-. :/]")
# MLflow's log_batch limits per call.
_MAX_METRICS, _MAX_PARAMS = 1000, 100


def _need(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"exporting to {extra} needs the {module} module: pip install 'ltlib[{extra}]'")


# ----------------------------------------------------------------------------- what a run gives


def config_params(config: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """A config as flat parameters: nested objects by dotted key (``loss_params.gamma``), lists and null as JSON text."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(config_params(value, f"{prefix}{key}."))
        elif isinstance(value, (str, int, float, bool)):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


def scalars(obj: Any, prefix: str = "") -> dict[str, float]:
    """The numbers in a record as floats, lists and objects by index and key (``per_class_accuracy/3``); text is left out."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in scalars(value, f"{prefix}{_UNSAFE.sub('_', str(key))}/").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in scalars(value, f"{prefix}{i}/").items()}
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {prefix.rstrip("/"): float(obj)}
    if obj is None:  # NaN as null: evaluate's domain × class cells are so before eval.json reads them back as NaN
        return {prefix.rstrip("/"): math.nan}
    return {}


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl line's metrics (the epoch is the step, not a metric)."""
    return scalars({k: v for k, v in record.items() if k != "epoch"})


def final_metrics(evaluation: dict[str, Any]) -> dict[str, float]:
    """eval.json's numbers under ``final/``, but ``groups`` (the classes of each group: indices, not metrics)."""
    return scalars({k: v for k, v in evaluation.items() if k != "groups"}, "final/")


def _start_time(run: Run) -> float:
    """When the run started (seconds since the epoch): its history's ``time`` counts from there."""
    return float(run.meta.get("created", time.time())) - float(run.meta.get("seconds", 0.0))


# ----------------------------------------------------------------------------- TensorBoard


class _TensorBoardRun:
    """One run's event files: scalars as float64 tensors (exact), parameters for the HParams tab."""

    def __init__(self, log_dir: Path) -> None:
        _need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))
        self.final_names: list[str] = []

    def metrics(self, values: dict[str, float], step: int, walltime: float | None = None) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step, walltime=walltime, new_style=True, double_precision=True)

    def final(self, evaluation: dict[str, Any], step: int, walltime: float | None = None) -> None:
        values = final_metrics(evaluation)
        self.metrics(values, step, walltime)
        self.final_names = list(values)

    def close(self, config: dict[str, Any] | None) -> None:
        if config is not None:
            from torch.utils.tensorboard.summary import hparams

            # The HParams tab lists the final metrics beside the parameters (their values are the scalars above).
            for summary in hparams(config_params(config), dict.fromkeys(self.final_names, 0.0)):
                self.writer._get_file_writer().add_summary(summary)  # as SummaryWriter.add_hparams writes them
        self.writer.close()


def export_tensorboard(runs: Iterable[Run], dest: str | os.PathLike) -> list[str]:
    """Write each run's event files into ``dest/<run id>``; returns the ids written (runs already there are skipped)."""
    _need("tensorboard", "tensorboard")
    written = []
    for run in runs:
        folder = Path(dest) / run.id
        if folder.is_dir() and any(folder.iterdir()):
            continue
        start = _start_time(run)
        tb = _TensorBoardRun(folder)
        for record in run.history:
            tb.metrics(epoch_metrics(record), int(record["epoch"]), start + float(record.get("time", 0.0)))
        if run.eval is not None:
            tb.final(run.eval, int(run.config.get("epochs", len(run.history))), start + float(run.meta.get("seconds", 0.0)))
        tb.close(run.config)
        written.append(run.id)
    return written


class TensorBoardLogger:
    """A ``train`` callback that writes the run's event files into ``log_dir`` as it trains, the same
    as :func:`export_tensorboard` writes into ``DEST/<run id>``.

    Use it as a context manager (or call :meth:`close`) so the files are closed when training fails.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        _need("tensorboard", "tensorboard")
        self.log_dir = Path(log_dir)
        self._run: _TensorBoardRun | None = None
        self._config: dict[str, Any] | None = None

    def __call__(self, event: Event) -> None:
        if event.kind == "start":
            self.close()  # a previous run that training left unfinished
            self._run, self._config = _TensorBoardRun(self.log_dir), event.data["config"]
        elif self._run is not None and event.kind == "epoch":
            self._run.metrics(epoch_metrics(event.data), int(event.data["epoch"]))
        elif self._run is not None and event.kind == "end":
            self._run.final({k: v for k, v in event.data.items() if k != "run_id"}, event.epochs)
            self.close()

    def close(self) -> None:
        if self._run is not None:
            self._run.close(self._config)
            self._run = None

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# ----------------------------------------------------------------------------- MLflow


def tracking_uri(dest: str | os.PathLike) -> str:
    """An MLflow tracking URI for ``dest``: a URI as given, a folder as its local file store."""
    text = str(dest)
    if re.match(r"^[a-z][a-z0-9+.-]*:", text) and not re.match(r"^[A-Za-z]:[\\/]", text):  # a scheme, not a Windows drive
        return text
    # MLflow 3 refuses its file store unless asked for; a folder destination asks for it.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return Path(dest).resolve().as_uri()


def _client(dest: str | os.PathLike, experiment: str) -> tuple[Any, str]:
    """An MLflow client for ``dest`` and the id of ``experiment`` there (created when missing)."""
    _need("mlflow", "mlflow")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(dest))
    found = client.get_experiment_by_name(experiment)
    return client, found.experiment_id if found is not None else client.create_experiment(experiment)


class _MlflowRun:
    """One MLflow run, written in batches."""

    def __init__(self, client: Any, experiment_id: str, run_name: str | None, tags: dict[str, str], start_ms: int | None = None) -> None:
        self.client = client
        self.id = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=run_name).info.run_id

    def params(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in config_params(config).items()]
        for i in range(0, len(items), _MAX_PARAMS):
            self.client.log_batch(self.id, params=items[i : i + _MAX_PARAMS])

    def metrics(self, values: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        items = [Metric(k, v, stamp, step) for k, v in values.items()]
        for i in range(0, len(items), _MAX_METRICS):
            self.client.log_batch(self.id, metrics=items[i : i + _MAX_METRICS])

    def close(self, status: str, tags: dict[str, str], end_ms: int | None = None) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.id, key, value)
        self.client.set_terminated(self.id, status, end_time=end_ms)


def _exported(client: Any, experiment_id: str, run_id: str) -> bool:
    return bool(client.search_runs([experiment_id], filter_string=f"tags.`ltlib.run_id` = '{run_id}'", max_results=1))


def export_mlflow(runs: Iterable[Run], dest: str | os.PathLike, experiment: str = EXPERIMENT) -> list[str]:
    """Log each run into the MLflow ``experiment`` at ``dest`` (a folder or tracking URI); returns the
    ids written (runs already there, by their ``ltlib.run_id`` tag, are skipped)."""
    client, experiment_id = _client(dest, experiment)
    written = []
    for run in runs:
        if _exported(client, experiment_id, run.id):
            continue
        start = _start_time(run)
        ml = _MlflowRun(client, experiment_id, run.id, {"ltlib.model": str(run.meta.get("model", ""))}, int(start * 1000))
        ml.params(run.config)
        for record in run.history:
            ml.metrics(epoch_metrics(record), int(record["epoch"]), int((start + float(record.get("time", 0.0))) * 1000))
        end_ms = int((start + float(run.meta.get("seconds", 0.0))) * 1000)
        if run.eval is not None:
            ml.metrics(final_metrics(run.eval), int(run.config.get("epochs", len(run.history))), end_ms)
        ml.close("FINISHED" if run.status == "finished" else "FAILED", {"ltlib.run_id": run.id}, end_ms)
        written.append(run.id)
    return written


class MLflowLogger:
    """A ``train`` callback that logs the run into the MLflow ``experiment`` at ``dest`` (a folder or a
    tracking URI) as it trains, the same as :func:`export_mlflow` logs a saved run.

    Use it as a context manager (or call :meth:`close`): a run that training leaves with an exception
    is marked FAILED (KILLED when interrupted) instead of staying RUNNING.
    """

    def __init__(self, dest: str | os.PathLike = DEFAULT_DEST["mlflow"], experiment: str = EXPERIMENT) -> None:
        self.client, self.experiment_id = _client(dest, experiment)
        self._run: _MlflowRun | None = None

    def __call__(self, event: Event) -> None:
        if event.kind == "start":
            self.close()  # a previous run that training left unfinished: FAILED
            self._run = _MlflowRun(self.client, self.experiment_id, None, {"ltlib.model": str(event.data.get("model", ""))})
            self._run.params(event.data["config"])
        elif self._run is not None and event.kind == "epoch":
            self._run.metrics(epoch_metrics(event.data), int(event.data["epoch"]))
        elif self._run is not None and event.kind == "end":
            self._run.metrics(final_metrics({k: v for k, v in event.data.items() if k != "run_id"}), event.epochs)
            run_id = event.data.get("run_id")
            # A saved run gets the name and tag a post-hoc export gives it (train(save=False) has no id).
            self._run.close("FINISHED", {"ltlib.run_id": run_id, "mlflow.runName": run_id} if run_id else {})
            self._run = None

    def close(self, status: str = "FAILED") -> None:
        """End an MLflow run that training left unfinished with ``status``."""
        if self._run is not None:
            self._run.close(status, {})
            self._run = None

    def __enter__(self) -> MLflowLogger:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        from ltlib.train import Cancelled

        self.close("KILLED" if kind is not None and (issubclass(kind, Cancelled) or not issubclass(kind, Exception)) else "FAILED")


# ----------------------------------------------------------------------------- CSV


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV with the union of their columns (first-seen order); a missing value is empty."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def export_csv(runs: Iterable[Run], dest: str | os.PathLike) -> list[str]:
    """Write ``dest/history.csv`` (a row per run and epoch: run_id, epoch, metrics) and ``dest/runs.csv``
    (a row per run: run_id, status, parameters, final metrics); returns the ids written."""
    runs = list(runs)
    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    history = [{"run_id": r.id, "epoch": h["epoch"], **epoch_metrics(h)} for r in runs for h in r.history]
    summary = [{"run_id": r.id, "status": r.status, **config_params(r.config), **final_metrics(r.eval or {})} for r in runs]
    _write_csv(folder / "history.csv", history)
    _write_csv(folder / "runs.csv", summary)
    return [r.id for r in runs]


EXPORTERS = {"tensorboard": export_tensorboard, "mlflow": export_mlflow, "csv": export_csv}


def export(runs: Iterable[Run], to: str, dest: str | os.PathLike | None = None) -> list[str]:
    """Export ``runs`` to ``to`` (tensorboard, mlflow or csv) at ``dest`` (default: ``DEFAULT_DEST[to]``); returns the ids written."""
    if to not in EXPORTERS:
        raise ValueError(f"unknown export target {to!r}; choose one of: {', '.join(TARGETS)}")
    return EXPORTERS[to](runs, DEFAULT_DEST[to] if dest is None else dest)
