import numpy as np
import pytest

from ltlib import calibration
from ltlib.cli import main
from ltlib.metrics import evaluate, posthoc_adjust, softmax
from ltlib.presets import preset
from ltlib.runs import load_run
from ltlib.train import train


def test_tau_norm_hand_case():
    f = np.array([[1.0, 1.0], [2.0, 0.0]])
    w = np.array([[2.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(calibration.tau_norm_logits(f, w, 0.0), [[2.0, 1.0], [4.0, 0.0]])
    # τ = 1: both class vectors have unit norm, the larger-norm class loses its advantage.
    np.testing.assert_allclose(calibration.tau_norm_logits(f, w, 1.0), [[1.0, 1.0], [2.0, 0.0]])
    np.testing.assert_allclose(calibration.tau_norm_logits(f, w, 0.5), [[2 / np.sqrt(2), 1.0], [4 / np.sqrt(2), 0.0]])
    with pytest.raises(ValueError, match="tau=-1"):
        calibration.tau_norm_logits(f, w, -1)


def _overconfident(factor: float, n: int = 4000, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4)) * 2
    labels = np.array([rng.choice(4, p=p) for p in softmax(z)])
    return factor * z, labels


def test_fit_temperature_recovers_the_scale():
    logits, labels = _overconfident(3.0)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)
    per_class = calibration.fit_class_temperature(logits, labels)
    assert per_class.shape == (4,)
    np.testing.assert_allclose(per_class, 3.0, rtol=0.25)


def test_adjust_composes_and_keeps_argmax_under_temperature():
    logits, labels = _overconfident(1.0, n=200)
    counts = np.array([100, 30, 10, 1])
    out = calibration.Outputs(logits, labels, counts)
    np.testing.assert_allclose(calibration.adjust(out, logit_tau=1.0), posthoc_adjust(logits, counts, 1.0))
    hot = calibration.adjust(out, temperature=0.5)
    np.testing.assert_array_equal(hot.argmax(1), logits.argmax(1))
    with pytest.raises(ValueError, match="temperature"):
        calibration.adjust(out, temperature=0.0)
    with pytest.raises(ValueError, match="tau_norm needs"):
        calibration.adjust(out, tau_norm=1.0)


def test_saved_run_reproduces_tau_norm_and_has_validation_logits():
    run = load_run(train(preset("digits-quick", epochs=5, tau_norm=1.0, val_fraction=0.2)).run_id)
    out = calibration.Outputs.from_run(run)
    assert out.features.shape == (len(out.labels), run.arrays["features"].shape[1])
    again = evaluate(calibration.adjust(out, tau_norm=1.0), out.labels, out.class_counts)
    assert again["balanced_accuracy"] == pytest.approx(run.eval["balanced_accuracy"])
    assert len(out.val_logits) == len(out.val_labels) == run.meta["n_val"] > 0
    assert calibration.fit_temperature(out.val_logits, out.val_labels) > 0
    rows = calibration.sweep_tau_norm(out, [0.0, 1.0])
    assert rows[1]["balanced_accuracy"] == pytest.approx(run.eval["balanced_accuracy"])


def test_tau_norm_needs_linear_head_and_parses_on_cli(capsys):
    with pytest.raises(ValueError, match="linear classifier head"):
        train(preset("digits-quick", epochs=1, loss="ldam", tau_norm=1.0), save=False)
    assert main(["train", "--preset", "digits-quick", "--epochs", "1", "--tau-norm", "0.5"]) == 0
