import pytest

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
    assert main(["sweep", "--preset", "digits-quick", "--epochs", "2", "--grid", "loss=ce,balanced_softmax", "--grid", "seed=0,1"]) == 0
    assert len(list_runs()) == 4
    assert "balanced_softmax" in capsys.readouterr().out
    assert main(["sweep", "--preset", "digits-quick", "--grid", "colour=red"]) == 2
