"""``ltlib export`` and the live loggers, read back with the real libraries: TensorBoard's
EventAccumulator and MLflow's client see the run's eval.json and metrics.jsonl numbers exactly, and a
live logger writes what a post-hoc export of the same run writes."""

from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ltlib import cli, export
from ltlib.presets import preset
from ltlib.runs import Run, load_run
from ltlib.train import train


def _numbers(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The expected metrics of a digits run's record: top-level numbers, and lists of numbers by index."""
    out = {}
    for key, value in record.items():
        if isinstance(value, list):
            out.update({f"{prefix}{key}/{i}": float(v) for i, v in enumerate(value) if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
            out[f"{prefix}{key}"] = float(value)
    return out


def _expected(run: Run) -> dict[str, list[tuple[int, float]]]:
    """Each metric's (step, value) series: metrics.jsonl at its epochs, eval.json under final/ at the last."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in run.history:
        for key, value in _numbers(record).items():
            series.setdefault(key, []).append((record["epoch"], value))
    final = {k: v for k, v in run.eval.items() if k != "groups"}  # the classes of each group are not metrics
    for key, value in _numbers(final, "final/").items():
        series[key] = [(run.config["epochs"], value)]
    return series


def test_metric_names_flatten_a_record_by_index_and_key():
    record = {"epoch": 3, "loss": 0.5, "stage": 2, "per_class_accuracy": [1.0, 0.5], "cells": [[None, 1]], "rule": "count", "flag": True}
    record["per_domain_accuracy"] = {"blue on yellow": 0.25, "a|b": 1.0}  # a name MLflow would refuse is made safe
    want = {"loss": 0.5, "stage": 2.0, "per_class_accuracy/0": 1.0, "per_class_accuracy/1": 0.5, "cells/0/0": math.nan, "cells/0/1": 1.0}
    want |= {"per_domain_accuracy/blue on yellow": 0.25, "per_domain_accuracy/a_b": 1.0}
    np.testing.assert_equal(export.epoch_metrics(record), want)
    assert export.config_params({"loss": "ce", "loss_params": {"gamma": 1}, "lr_milestones": [8], "tau_norm": None, "bf16": True}) == {
        "loss": "ce",
        "loss_params.gamma": 1,
        "lr_milestones": "[8]",
        "tau_norm": "null",
        "bf16": True,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Run, Path]:
    """One digits run (every epoch evaluated), logged live to TensorBoard and MLflow while it trained."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what reading MLflow's file store asks for
        with export.TensorBoardLogger(tmp / "live-tb") as tb, export.MLflowLogger(tmp / "live-mlflow") as ml:
            result = train(preset("digits-quick", epochs=3, eval_every=1, device="cpu"), callbacks=[tb, ml], root=tmp / "runs")
        yield load_run(result.run_id, tmp / "runs"), tmp


def _tensorboard(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, Any], list[str]]:
    """Scalars (tag → (step, value) series), hparams and the hparams' metric tags of one run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(folder), size_guidance={TENSORS: 0})
    acc.Reload()
    scalars = {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]}
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    return scalars, hparams, [m.name.tag for m in experiment.metric_infos]


def _mlflow(dest: Path, run_id: str) -> dict[str, Any]:
    """What MLflow's client reads of the MLflow run tagged with ``run_id``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=dest.resolve().as_uri())
    experiment = client.get_experiment_by_name("ltlib")
    (found,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`ltlib.run_id` = '{run_id}'")
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key)) for key in found.data.metrics}
    tags = {k: v for k, v in found.data.tags.items() if k.startswith("ltlib.")}
    return {"name": found.info.run_name, "status": found.info.status, "params": found.data.params, "metrics": history, "tags": tags}


def test_tensorboard_export_holds_the_runs_numbers_exactly(trained, tmp_path):
    run, _ = trained
    assert export.export([run], "tensorboard", tmp_path) == [run.id]
    scalars, hparams, metric_tags = _tensorboard(tmp_path / run.id)
    np.testing.assert_equal(scalars, _expected(run))  # exact, NaN equal to NaN
    for c, accuracy in enumerate(run.eval["per_class_accuracy"]):
        assert scalars[f"final/per_class_accuracy/{c}"] == [(3, accuracy)]
    assert scalars["final/balanced_accuracy"] == [(3, run.eval["balanced_accuracy"])]
    assert hparams["loss"] == "ce" and hparams["lr"] == run.config["lr"] and hparams["lr_milestones"] == "[]"
    assert hparams == export.config_params(run.config)
    assert sorted(metric_tags) == sorted(k for k in scalars if k.startswith("final/"))
    assert export.export([run], "tensorboard", tmp_path) == []  # already there: skipped, not written twice


def test_mlflow_export_holds_the_runs_numbers_exactly(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run, _ = trained
    assert export.export([run], "mlflow", tmp_path) == [run.id]
    logged = _mlflow(tmp_path, run.id)
    np.testing.assert_equal(logged["metrics"], _expected(run))
    assert logged["metrics"]["final/per_class_accuracy/9"] == [(3, run.eval["per_class_accuracy"][9])]
    assert logged["params"] == {k: str(v) for k, v in export.config_params(run.config).items()}
    assert logged["params"]["loss"] == "ce" and logged["params"]["tau_norm"] == "null"
    assert (logged["name"], logged["status"], logged["tags"]) == (run.id, "FINISHED", {"ltlib.run_id": run.id, "ltlib.model": "mlp"})
    assert export.export([run], "mlflow", tmp_path) == []


def test_live_loggers_write_what_a_post_hoc_export_writes(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run, tmp = trained
    export.export([run], "tensorboard", tmp_path / "tb")
    export.export([run], "mlflow", tmp_path / "mlflow")
    live, posthoc = _tensorboard(tmp / "live-tb"), _tensorboard(tmp_path / "tb" / run.id)
    np.testing.assert_equal(live, posthoc)
    assert _mlflow(tmp / "live-mlflow", run.id) == _mlflow(tmp_path / "mlflow", run.id)


def test_live_and_post_hoc_agree_on_per_domain_metrics(tmp_path, monkeypatch):
    """Domains: per-domain accuracy by name, and the domain × class cells, NaN where a cell has no test image."""
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with export.TensorBoardLogger(tmp_path / "live-tb") as tb:
        result = train(preset("digits-domains-quick", epochs=2, eval_every=1, device="cpu"), callbacks=[tb], root=tmp_path / "runs")
    run = load_run(result.run_id, tmp_path / "runs")
    export.export([run], "tensorboard", tmp_path / "tb")
    live, posthoc = _tensorboard(tmp_path / "live-tb"), _tensorboard(tmp_path / "tb" / run.id)
    np.testing.assert_equal(live, posthoc)
    for name, accuracy in run.eval["per_domain_accuracy"].items():
        assert live[0][f"final/per_domain_accuracy/{name}"] == [(2, accuracy)]
    cells = np.array(run.eval["domain_class_accuracy"], dtype=float)
    assert [live[0][f"final/domain_class_accuracy/{d}/{c}"][0][1] for d, c in np.ndindex(cells.shape)] == pytest.approx(
        cells.ravel().tolist(), nan_ok=True, rel=0, abs=0
    )


def test_csv_export_is_wide_and_tidy(trained, tmp_path):
    run, _ = trained
    assert export.export([run, run], "csv", tmp_path) == [run.id, run.id]
    with open(tmp_path / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    with open(tmp_path / "runs.csv", newline="") as f:
        (summary, _) = list(csv.DictReader(f))
    assert [(row["run_id"], int(row["epoch"])) for row in history] == [(run.id, e) for e in (1, 2, 3)] * 2
    for row, record in zip(history, run.history):
        assert float(row["loss"]) == record["loss"] and float(row["per_class_accuracy/4"]) == record["per_class_accuracy"][4]
    assert summary["run_id"] == run.id and summary["status"] == "finished" and summary["loss"] == "ce"
    got = {k: float(v) for k, v in summary.items() if k.startswith("final/")}
    want = {k: v for k, [(_, v)] in ((k, s) for k, s in _expected(run).items() if k.startswith("final/"))}
    assert got.keys() == want.keys() and all(got[k] == want[k] or (math.isnan(got[k]) and math.isnan(want[k])) for k in want)


def test_cli_exports_runs_and_skips_those_already_there(trained, tmp_path, capsys):
    run, tmp = trained
    argv = ["export", run.id, "--to", "tensorboard", "--dest", str(tmp_path), "--out", str(tmp / "runs")]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == f"exported 1 run(s) to tensorboard at {tmp_path}"
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    assert out.out.strip() == f"exported 0 run(s) to tensorboard at {tmp_path}"
    assert out.err.strip() == f"note: skipped 1 run(s) already there: {run.id}"
    assert cli.main(["export", "missing-run", "--to", "csv", "--dest", str(tmp_path / "csv"), "--out", str(tmp / "runs")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no run 'missing-run' in {tmp / 'runs'}"
    assert not (tmp_path / "csv").exists()  # every run is read before anything is written


@pytest.mark.parametrize("module, target", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_missing_package_is_one_line_naming_the_extra(module, target, trained, tmp_path, monkeypatch, capsys):
    run, tmp = trained
    monkeypatch.setitem(sys.modules, module, None)  # importlib.util.find_spec then finds nothing
    message = f"exporting to {target} needs the {module} module: pip install 'ltlib[{target}]'"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        (export.TensorBoardLogger if target == "tensorboard" else export.MLflowLogger)(tmp_path)
    assert cli.main(["export", run.id, "--to", target, "--dest", str(tmp_path), "--out", str(tmp / "runs")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
