"""Hand-computed cases for the losses the training loop relies on (the zoo tests cover all)."""

import math

import numpy as np
import pytest
import torch

from ltlib import losses

COUNTS = [8, 2, 1]
LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 1.0]])
TARGETS = torch.tensor([0, 2])


def _ce(z, y):
    return -z[y] + math.log(sum(math.exp(v) for v in z))


def test_ce_hand_case():
    want = (_ce([2, 1, 0], 0) + _ce([0.5, 0.5, 1], 2)) / 2
    assert losses.build("ce", COUNTS)(LOGITS, TARGETS).item() == pytest.approx(want, abs=1e-5)


def test_focal_hand_case_and_gamma_zero_is_ce():
    p0 = math.exp(-_ce([2, 1, 0], 0))
    p1 = math.exp(-_ce([0.5, 0.5, 1], 2))
    want = (-((1 - p0) ** 2) * math.log(p0) - ((1 - p1) ** 2) * math.log(p1)) / 2
    assert losses.build("focal", COUNTS)(LOGITS, TARGETS).item() == pytest.approx(want, abs=1e-5)
    assert losses.build("focal", COUNTS, gamma=0.0)(LOGITS, TARGETS).item() == pytest.approx(
        losses.build("ce", COUNTS)(LOGITS, TARGETS).item(), abs=1e-6
    )


def test_balanced_softmax_hand_case():
    adj = [math.log(8), math.log(2), 0.0]
    want = (_ce([2 + adj[0], 1 + adj[1], 0], 0) + _ce([0.5 + adj[0], 0.5 + adj[1], 1], 2)) / 2
    assert losses.build("balanced_softmax", COUNTS)(LOGITS, TARGETS).item() == pytest.approx(want, abs=1e-5)


def test_ldam_hand_case():
    m = np.array(COUNTS, float) ** -0.25
    m = m * 0.5 / m.max()  # the rarest class gets the 0.5 margin
    s = 30.0
    z = LOGITS.numpy() * 1.0
    want = (_ce([z[0, 0] - s * m[0], z[0, 1], z[0, 2]], 0) + _ce([z[1, 0], z[1, 1], z[1, 2] - s * m[2]], 2)) / 2
    loss = losses.build("ldam", COUNTS)
    assert loss.head == "cosine" and loss.head_params == {"scale": 30.0}
    assert loss(LOGITS, TARGETS).item() == pytest.approx(want, abs=1e-4)


def test_class_weights_give_weighted_mean():
    loss = losses.build("ce", COUNTS)
    loss.set_class_weight(np.array([1.0, 1.0, 3.0]))
    want = (_ce([2, 1, 0], 0) + 3 * _ce([0.5, 0.5, 1], 2)) / 4
    assert loss(LOGITS, TARGETS).item() == pytest.approx(want, abs=1e-5)


def test_effective_number_weights():
    w = losses.effective_number_weights([100, 10], 0.9)
    raw = np.array([(1 - 0.9) / (1 - 0.9**100), (1 - 0.9) / (1 - 0.9**10)])
    np.testing.assert_allclose(w, raw / raw.sum() * 2)
    with pytest.raises(ValueError, match="beta"):
        losses.effective_number_weights([1, 2], 1.0)


def test_bad_loss_name_and_parameter():
    with pytest.raises(ValueError, match="unknown loss 'nope'; choose one of: .*balanced_softmax"):
        losses.build("nope", COUNTS)
    with pytest.raises(ValueError, match="gamma=-1"):
        losses.build("focal", COUNTS, gamma=-1)
    with pytest.raises(ValueError, match="no parameter 'tau'"):
        losses.build("ce", COUNTS, tau=1)
