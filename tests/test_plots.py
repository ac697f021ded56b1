"""The figures the app and notebooks share (ltlib.plots): values on tiny hand-computed cases, CSV and zip export."""

import io
import zipfile
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


def tiny_run(tmp_path) -> Run:
    """Three classes (counts 100, 10, 1) with hand-made logits; no training needed."""
    logits = np.array([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    from ltlib.metrics import evaluate

    e = evaluate(logits, labels, np.array([100, 10, 1]))
    run = Run("r", tmp_path, {"loss": "ce"}, {"class_names": ["a", "b", "c"]}, e, [{"epoch": 1, "loss": 1.0, **e}])
    run._arrays = {"test_logits": logits, "test_labels": labels, "head_weight": np.eye(3, dtype=np.float32)}
    return run


def test_accuracy_vs_count_trend_is_least_squares_in_log_count(tmp_path):
    run = tiny_run(tmp_path)
    # per-class accuracy: a 2/2, b 1/2, c 0/2 at counts 100, 10, 1 → exactly linear in ln(count).
    fig = plots.accuracy_vs_count(run)
    assert list(fig.data[0].y) == [1.0, 0.5, 0.0]
    trend = fig.data[1]
    slope = 0.5 / np.log(10)
    assert np.allclose(trend.y, slope * np.log(trend.x))
    assert f"{slope:+.3f}" in trend.name


def test_confidence_gap_hand_computed():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    labels = np.array([0, 0, 1, 1])
    fig = plots.confidence_gap(probs, labels, [5, 50], ["a", "b"])
    # class b (50 images) first: confidence (0.7+0.8)/2 − accuracy 1/2 = 0.25; class a: 0.75 − 1 = −0.25.
    assert list(fig.data[0].x) == ["b", "a"]
    assert np.allclose(fig.data[0].y, [0.25, -0.25])


def test_group_accuracy_bars():
    e = {"many": 0.9, "medium": 0.5, "few": 0.1, "balanced_accuracy": 0.5}
    fig = plots.group_accuracy([e, {**e, "few": 0.3}], ["A", "B"])
    assert [t.name for t in fig.data] == ["A", "B"] and list(fig.data[1].y) == [0.9, 0.5, 0.3, 0.5]


def test_sample_images_grid_rows_are_classes():
    x = np.zeros((4, 1, 2, 2), np.uint8)
    x[2:] = 200
    fig = plots.sample_images(x, np.array([0, 0, 1, 1]), ["zero", "one"], per_class=2)
    grid = np.asarray(fig.data[0].z)
    assert grid.shape == (2 * 3, 2 * 3, 3)  # 2 rows × (2 px + 1 pad), 2 columns likewise
    assert (grid[0:2, 0:2] == 0).all() and (grid[3:5, 0:2] == 200).all()
    with pytest.raises(ValueError, match="N×C×H×W"):
        plots.sample_images(np.zeros((4, 3)), np.zeros(4, int), ["a"])


def test_figure_table_has_the_plotted_values(tmp_path):
    run = tiny_run(tmp_path)
    table = plots.figure_table(plots.per_class_accuracy(run))
    acc = table[table.trace == "test accuracy"]
    assert list(acc.x) == ["a", "b", "c"] and list(acc.y) == [1.0, 0.5, 0.0]
    heat = plots.figure_table(plots.confusion(run))
    assert len(heat) == 9 and heat.z.sum() == pytest.approx(3.0)  # three rows, each sums to 1


def test_figures_zip_holds_every_figure_and_its_csv(tmp_path):
    figs = plots.run_figures(tiny_run(tmp_path))
    assert {"per_class_accuracy", "confusion", "reliability", "weight_norms"} <= set(figs)
    data = plots.figures_zip({k: figs[k] for k in ("per_class_accuracy", "confusion")}, formats=("svg",))
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert sorted(names) == ["confusion.csv", "confusion.svg", "per_class_accuracy.csv", "per_class_accuracy.svg"]


def test_decision_regions_of_a_toy2d_run_put_each_class_mean_in_its_region():
    from ltlib import embed
    from ltlib.runs import load_run
    from ltlib.train import Config, train

    r = train(Config(dataset="toy2d", imbalance=1.0, model="mlp", epochs=8, batch_size=64, lr=0.05, warmup_epochs=0, eval_every=8))
    grid = embed.decision_grid(load_run(r.run_id), size=60)
    assert grid["pred"].shape == (60, 60)
    for c in range(5):  # toy2d class means lie on a circle of radius 2 at angles 2πc/5
        mx, my = 2 * np.cos(2 * np.pi * c / 5), 2 * np.sin(2 * np.pi * c / 5)
        assert grid["pred"][np.abs(grid["ys"] - my).argmin(), np.abs(grid["xs"] - mx).argmin()] == c
    fig = plots.decision_regions(grid, [f"class {c}" for c in range(5)])
    assert fig.data[0].type == "heatmap" and len(fig.data) == 6
    with pytest.raises(ValueError, match="2-D feature data"):
        digits = train(Config(dataset="digits", model="mlp", epochs=1, batch_size=64, eval_every=1))
        embed.decision_grid(load_run(digits.run_id))
