import numpy as np
import pytest
from sklearn.metrics import recall_score

from ltlib import metrics


def test_per_class_accuracy_equals_sklearn_recall():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    pred = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 5, 300))
    ours = metrics.per_class_accuracy(pred, labels, 5)
    np.testing.assert_allclose(ours, recall_score(labels, pred, average=None), atol=1e-12)
    logits = np.eye(5)[pred] * 3.0
    e = metrics.evaluate(logits, labels, np.array([100, 50, 20, 10, 5]))
    assert e["balanced_accuracy"] == pytest.approx(recall_score(labels, pred, average="macro"))
    assert e["accuracy"] == pytest.approx(np.mean(pred == labels))


def test_ece_hand_computed():
    # Two bins of 15 are used: confidences 0.9 (2 samples, 1 right) and 0.6 (2 samples, 2 right).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    # |0.5 − 0.9|·2/4 + |1.0 − 0.6|·2/4 = 0.2 + 0.2
    assert metrics.expected_calibration_error(probs, labels, 15) == pytest.approx(0.4)
    b = metrics.reliability_bins(probs, labels, 15)
    assert b["count"].sum() == 4 and b["count"][13] == 2 and b["count"][8] == 2


def test_ece_near_zero_when_calibrated():
    rng = np.random.default_rng(1)
    p1 = rng.uniform(0.5, 1.0, 200_000)
    labels = (rng.random(200_000) >= p1).astype(int)  # label 0 with probability p1: calibrated
    probs = np.stack([p1, 1 - p1], 1)
    assert metrics.expected_calibration_error(probs, labels) < 0.005


def test_classwise_ece_hand_case():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.classwise_ece(probs, np.array([0, 1])).tolist() == [0.0, 0.0]
    np.testing.assert_allclose(metrics.classwise_ece(probs, np.array([1, 0])), [1.0, 1.0])


def test_margins_sign_and_value():
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    m = metrics.margins(logits, np.array([0, 1]))
    assert m.tolist() == [2.0, -3.0]
    assert np.all((m > 0) == (logits.argmax(1) == np.array([0, 1])))


def test_nll_brier_confusion():
    probs = np.array([[0.5, 0.5], [0.2, 0.8]])
    labels = np.array([0, 1])
    assert metrics.nll(probs, labels) == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2)
    assert metrics.brier(probs, labels) == pytest.approx(((0.25 + 0.25) + (0.04 + 0.04)) / 2)
    cm = metrics.confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 2)
    assert cm.tolist() == [[1.0, 0.0], [0.5, 0.5]]


def test_posthoc_adjustment_subtracts_tau_log_prior():
    z = np.zeros((1, 2))
    out = metrics.posthoc_adjust(z, np.array([90, 10]), 1.0)
    np.testing.assert_allclose(out, [[-np.log(0.9), -np.log(0.1)]])
    assert out.argmax() == 1  # the tail class wins a tie once the prior is removed


def test_pca_projection_recovers_the_main_axis_and_caches(tmp_path):
    from ltlib.embed import project, run_embedding
    from ltlib.presets import preset
    from ltlib.runs import load_run
    from ltlib.train import train

    rng = np.random.default_rng(0)
    x = np.zeros((200, 5))
    x[:, 3] = rng.normal(0, 10, 200)  # the dominant direction
    x += rng.normal(0, 0.1, x.shape)
    coords = project(x, "pca")
    assert abs(np.corrcoef(coords[:, 0], x[:, 3])[0, 1]) > 0.999
    run = load_run(train(preset("digits-quick", epochs=2)).run_id)
    first, labels = run_embedding(run, "pca")
    assert first.shape == (len(labels), 2) and (run.path / "embedding-pca.npy").exists()
    again, _ = run_embedding(run, "pca")
    np.testing.assert_array_equal(first, again)
    with pytest.raises(ValueError, match="unknown projection 'lda'"):
        run_embedding(run, "lda")
