"""Figures the notebooks use: hand-made runs, checked value by value."""

from pathlib import Path

import numpy as np
import pytest

from ltlib import plots
from ltlib.runs import Run


def _run(logits: np.ndarray, labels: np.ndarray, counts: list[int]) -> Run:
    ev = {"class_counts": counts, "per_class_accuracy": [0.0] * len(counts), "balanced_accuracy": 0.0}
    return Run(
        "r", Path("."), {}, {"class_names": [f"c{i}" for i in range(len(counts))]}, ev, [], {"test_logits": logits, "test_labels": labels}
    )


def test_predictions_per_class_counts_argmax_shares_head_to_tail():
    # Class 2 is the head (most training images); 3 of 4 test images are predicted as class 2.
    logits = np.array([[0, 0, 5], [0, 0, 5], [5, 0, 0], [0, 0, 5]], dtype=np.float32)
    labels = np.array([0, 1, 2, 2])
    fig = plots.predictions_per_class(_run(logits, labels, [10, 1, 100]))
    predicted, true = fig.data
    assert list(predicted.x) == ["c2", "c0", "c1"]
    assert np.allclose(predicted.y, [0.75, 0.25, 0.0])
    assert np.allclose(true.y, [0.5, 0.25, 0.25])


def test_per_class_values_orders_every_series_head_to_tail():
    fig = plots.per_class_values([5, 50, 20], {"a": [1, 2, 3], "b": [0.1, 0.2, 0.3]}, ["x", "y", "z"], "t", "v")
    assert [list(t.x) for t in fig.data] == [["y", "z", "x"]] * 2
    assert list(fig.data[0].y) == [2, 3, 1]
    assert np.allclose(fig.data[1].y, [0.2, 0.3, 0.1])


def test_sweep_plots_one_line_per_metric():
    evals = [{"balanced_accuracy": 0.9, "few": 0.8}, {"balanced_accuracy": 0.7, "few": 0.3}]
    fig = plots.sweep([1, 100], evals, "imbalance", keys=("balanced_accuracy", "few"), log_x=True)
    assert [t.name for t in fig.data] == ["balanced_accuracy", "few"]
    assert list(fig.data[1].y) == [0.8, 0.3]
    assert fig.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="values"):
        plots.sweep([1], evals, "imbalance")


def test_tradeoff_places_each_method_at_its_head_and_tail_accuracy():
    fig = plots.tradeoff({"ce": {"many": 1.0, "few": 0.5}, "cb": {"many": 0.9, "few": 0.7}})
    (points,) = fig.data
    assert list(points.text) == ["ce", "cb"]
    assert list(points.x) == [1.0, 0.9] and list(points.y) == [0.5, 0.7]


def test_per_class_slider_shows_one_step_at_a_time():
    fig = plots.per_class_slider([1, 10], {"0": [0.2, 0.9], "1": [0.6, 0.7]}, ["tail", "head"], "t", "τ")
    assert [t.visible for t in fig.data] == [True, False]
    assert list(fig.data[1].x) == ["head", "tail"] and list(fig.data[1].y) == [0.7, 0.6]
    (slider,) = fig.layout.sliders
    assert [s.label for s in slider.steps] == ["0", "1"]
    assert slider.steps[1].args[0]["visible"] == [False, True]


def test_per_domain_accuracy_groups_runs_by_domain():
    evals = {"ce": {"per_domain_accuracy": {"red": 0.8, "blue": 0.6}}, "tally": {"per_domain_accuracy": {"red": 0.7, "blue": 0.9}}}
    fig = plots.per_domain_accuracy(evals)
    assert [t.name for t in fig.data] == ["ce", "tally"]
    assert list(fig.data[1].x) == ["red", "blue"] and list(fig.data[1].y) == [0.7, 0.9]
