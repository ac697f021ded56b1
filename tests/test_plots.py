"""The figures the app and notebooks share (ltlib.plots): values on tiny hand-computed cases, CSV and zip export."""

import io
import zipfile

import numpy as np
import pytest

from ltlib import plots
from ltlib.runs import Run


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
