from dataclasses import replace

import pytest
import torch

from ltlib.cli import main
from ltlib.presets import preset
from ltlib.runs import list_runs
from ltlib.sweep import grid, train_many
from ltlib.train import train


def test_grid_is_the_cartesian_product():
    configs = grid(preset("digits-quick"), {"loss": ["ce", "ldam"], "seed": [0, 1, 2]})
    assert [(c.loss, c.seed) for c in configs] == [(a, s) for a in ("ce", "ldam") for s in (0, 1, 2)]


@pytest.mark.parametrize("concurrent", [False, True])
def test_runs_trained_together_equal_runs_trained_alone(concurrent):
    configs = grid(preset("digits-quick", epochs=4), {"loss": ["ce", "balanced_softmax"], "seed": [0, 1]})
    together = train_many(configs, save=False, concurrent=concurrent)
    alone = [train(c, save=False) for c in configs]
    assert [r.eval["per_class_accuracy"] for r in together] == [r.eval["per_class_accuracy"] for r in alone]


def test_a_bad_config_fails_before_any_run(isolated_home):
    with pytest.raises(ValueError, match="imbalance"):
        train_many([preset("digits-quick", epochs=1), preset("digits-quick", imbalance=0.5)])
    assert list_runs() == []


def test_sweep_cli_trains_the_grid_and_compares(capsys):
    argv = ["sweep", "--preset", "digits-quick", "--epochs", "2", "--grid", "loss=ce,balanced_softmax", "--grid", "seed=0,1", "--no-stack"]
    assert main(argv) == 0
    assert len(list_runs()) == 4
    assert "balanced_softmax" in capsys.readouterr().out
    assert main(["sweep", "--preset", "digits-quick", "--grid", "colour=red"]) == 2


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
        ),
    ],
)
def test_stacked_runs_train_like_runs_alone(device, monkeypatch):
    """Graph-engine runs of one shape train as a model-stack (grouped convolutions, one graph epoch);
    each run's losses and accuracy match the same config trained alone (up to float rounding: the
    grouped convolutions sum in another order), the mixup runs in a stack of their own (runs stack only
    with runs of the same mixing), and the meta-sampler run, whose between-epoch meta steps read its own model.
    On a GPU: captured graphs, float32 without TF32 (whose noise compounds)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    base = preset(
        "digits-quick", epochs=3, imbalance=10, lr=0.02, model="resnet8", batch_size=40, engine="graph", device=device, bf16=False
    )
    configs = [
        base,
        replace(base, loss="balanced_softmax", seed=1),
        replace(base, sampler="class_balanced", seed=2),
        replace(base, mixing="mixup", seed=3),
        replace(base, mixing="mixup", seed=5),
        replace(base, sampler="meta", seed=4),
    ]
    together = train_many(configs, save=False, concurrent=True)
    alone = [train(c, save=False) for c in configs]
    for t, a in zip(together, alone):
        losses_t, losses_a = [h["loss"] for h in t.history], [h["loss"] for h in a.history]
        assert losses_t[0] == pytest.approx(losses_a[0], rel=1e-5)
        assert losses_t == pytest.approx(losses_a, rel=5e-3)
        assert t.eval["balanced_accuracy"] == pytest.approx(a.eval["balanced_accuracy"], abs=0.02)


def test_stacked_runs_record_their_stack(isolated_home):
    from ltlib.runs import load_run

    base = preset("digits-quick", epochs=1, model="resnet8", engine="graph", device="cpu")
    results = train_many([base, replace(base, seed=1), replace(base, model="cnn")], concurrent=True)
    notes = [load_run(r.run_id).meta["engine_note"] for r in results]
    assert notes[:2] == ["graph step, uncaptured on CPU, one model-stack with 1 other run"] * 2
    assert "stack" not in notes[2]


def test_runs_that_change_their_step_train_beside_the_stack():
    """A two-stage run needs a fresh graph epoch at its stage switch: it trains on a graph of its own."""
    base = preset("digits-quick", epochs=4, model="resnet8", engine="graph", device="cpu")
    results = train_many([base, replace(base, seed=1), replace(base, schedule="crt")], save=False, concurrent=True)
    assert [h.get("stage") for h in results[2].history][-1] == 2
    assert not any(p.requires_grad for p in results[2].model.backbone.parameters())
