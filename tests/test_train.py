import threading

import numpy as np
import pytest
import torch

from ltlib import models
from ltlib.presets import preset
from ltlib.runs import list_runs
from ltlib.train import Cancelled, Config, TrainingDiverged, train


def quick(**kw):
    return preset("digits-quick", **{"epochs": 4, **kw})


def test_same_seed_same_config_gives_identical_metrics():
    a = train(quick(seed=5), save=False)
    b = train(quick(seed=5), save=False)
    c = train(quick(seed=6), save=False)
    assert a.eval == b.eval
    assert a.history == [{**h, "time": a.history[i]["time"]} for i, h in enumerate(b.history)]
    assert a.eval["per_class_accuracy"] != c.eval["per_class_accuracy"] or a.history[0]["loss"] != c.history[0]["loss"]


def test_run_is_saved_with_events_and_learns():
    events = []
    result = train(preset("digits-quick"), callbacks=[events.append])
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 30 and kinds.count("eval") == 6
    assert result.eval["balanced_accuracy"] > 0.5  # well above chance (0.1) even with 1-image tail classes
    assert [r.id for r in list_runs()] == [result.run_id]


def test_cancel_leaves_no_run_folder(isolated_home):
    stop = threading.Event()

    def cancel_after_first_epoch(event):
        if event.kind == "epoch":
            stop.set()

    with pytest.raises(Cancelled):
        train(quick(), callbacks=[cancel_after_first_epoch], cancel=stop)
    assert not isolated_home.exists() or not any(isolated_home.iterdir())


def test_nan_loss_stops_and_marks_run_failed():
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        train(quick(lr=1e30, warmup_epochs=0))
    (run,) = list_runs()
    assert run.status == "failed" and "nan" in run.meta["error"] and run.eval is None


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(imbalance=0.5), "imbalance=0.5"),
        (dict(epochs=0), "epochs=0"),
        (dict(batch_size=100000), "batch_size=100000 is larger than the training set"),
        (dict(loss="nope"), "unknown loss 'nope'"),
        (dict(sampler="nope"), "unknown sampler 'nope'"),
        (dict(dataset="nope"), "unknown dataset 'nope'"),
        (dict(imbalance=10000), "zero training images"),
    ],
)
def test_bad_config_is_rejected_before_any_folder(kw, match, isolated_home):
    with pytest.raises(ValueError, match=match):
        train(quick(**kw))
    assert not isolated_home.exists() or not any(isolated_home.iterdir())


@pytest.mark.parametrize(
    "kw",
    [
        dict(loss="ldam", schedule="drw"),
        dict(loss="balanced_softmax", sampler="class_balanced"),
        dict(mixing="mixup"),
        dict(dataset="toy2d", imbalance=20),
        dict(model="cnn"),
        dict(model="resnet8", epochs=1),
        dict(posthoc_tau=1.0),
        dict(val_fraction=0.2),
    ],
)
def test_method_combinations_train(kw):
    result = train(quick(**kw), save=False)
    assert np.isfinite(result.history[-1]["loss"]) and 0 <= result.eval["balanced_accuracy"] <= 1


def test_drw_switches_weights_at_start_epoch():
    from ltlib.schedules import build

    class State:
        pass

    state = State()
    from ltlib import losses

    state.loss, state.class_counts = losses.build("ce", [100, 10]), np.array([100, 10])
    drw = build("drw", 200)
    assert drw.start_epoch == 160
    drw.on_epoch_start(159, state)
    assert state.loss.class_weight.tolist() == [1.0, 1.0]
    drw.on_epoch_start(160, state)
    w = state.loss.class_weight
    assert w[1] > w[0] and float(w.sum()) == pytest.approx(2.0)


def official_ldam_drw_lr(epoch: int, base: float = 0.1) -> float:
    """``adjust_learning_rate`` of the official LDAM-DRW ``cifar_train.py`` (1-based epoch inside)."""
    epoch = epoch + 1
    if epoch <= 5:
        return base * epoch / 5
    if epoch > 180:
        return base * 0.0001
    if epoch > 160:
        return base * 0.01
    return base


def test_cifar10_lt_learning_rate_is_the_official_one_at_every_epoch():
    cfg = preset("cifar10-lt")
    for epoch in range(cfg.epochs):
        assert cfg.learning_rate(epoch) == pytest.approx(official_ldam_drw_lr(epoch), rel=1e-12), epoch
    assert Config(epochs=200).milestones() == [160, 180]
    # The loop trains at what the config says.
    cfg = preset("digits-quick", epochs=4, warmup_epochs=1, lr_milestones=[2, 3], lr_gamma=0.01)
    lrs = [h["lr"] for h in train(cfg, save=False).history]
    assert lrs == pytest.approx([0.05, 0.05, 0.0005, 0.000005])


@pytest.mark.parametrize("name", models.MODELS.available())
@pytest.mark.parametrize("head", models.HEADS.available())
def test_models_expose_features_and_head(name, head):
    shape = (3, 32, 32) if name.startswith("resnet") else (1, 8, 8)
    model = models.build_model(name, shape, 5, head)
    x = torch.randn(4, *shape)
    if getattr(model, "bilateral", False):  # BBN trains on (conventional, re-balancing) pair batches
        x = torch.stack([x, x], dim=1)
    f = model.features(x)
    assert f.shape == (4, model.feature_dim)
    torch.testing.assert_close(model(x), model.head(f))


def test_resnet_depths_have_the_right_number_of_blocks():
    for depth, blocks in ((8, 3), (20, 9), (32, 15)):
        m = models.build_model(f"resnet{depth}", (3, 32, 32), 10)
        assert len(m.backbone.blocks) == blocks
    n_params = sum(p.numel() for p in models.build_model("resnet32", (3, 32, 32), 10).parameters())
    assert 460_000 < n_params < 470_000  # ResNet-32 has 0.46 M parameters (He et al. 2016, Table 6)


def test_cosine_head_outputs_scaled_cosines():
    head = models.CosineHead(4, 3, scale=30.0)
    f = torch.randn(5, 4)
    out = head(f)
    assert out.abs().max() <= 30.0 + 1e-4
    w = head.weight / head.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, 30.0 * (f / f.norm(dim=1, keepdim=True)) @ w.T)
