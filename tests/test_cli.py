import subprocess
import sys

import pytest

from ltlib.cli import main
from ltlib.data import FASHION_MNIST_DIR
from ltlib.runs import list_runs
from ltlib.schedules import SCHEDULES


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ltlib.cli", *args], capture_output=True, text=True, timeout=300)


def test_train_runs_show_compare_end_to_end(capsys):
    assert main(["train", "--preset", "digits-quick", "--quiet"]) == 0
    assert (
        main(
            [
                "train",
                "--dataset",
                "digits",
                "--imbalance",
                "100",
                "--loss",
                "balanced_softmax",
                "--epochs",
                "30",
                "--batch-size",
                "32",
                "--quiet",
            ]
        )
        == 0
    )
    a, b = (r.id for r in list_runs())
    assert main(["runs"]) == 0
    assert main(["show", a]) == 0
    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "balanced_softmax" in out and "train_count" in out and "balanced_accuracy" in out


def test_loss_params_flow_into_the_config():
    assert main(["train", "--preset", "digits-quick", "--epochs", "2", "--loss", "focal", "--loss-param", "gamma=1.5", "--quiet"]) == 0
    (run,) = list_runs()
    assert run.config["loss_params"] == {"gamma": 1.5} and run.config["loss"] == "focal"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--loss", "nope"], "unknown loss 'nope'; choose one of"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--sampler", "nope"], "unknown sampler 'nope'"),
        (["--imbalance", "0.5"], "imbalance=0.5"),
        (["--epochs", "0"], "epochs=0"),
        (["--batch-size", "99999"], "batch_size=99999 is larger than the training set"),
        (["--dataset", "imagefolder", "--dataset-param", "path=/no/such/folder"], "path does not exist: /no/such/folder"),
        (["--loss", "focal", "--loss-param", "gamma=-2"], "gamma=-2"),
        (["--preset", "nope"], "unknown preset 'nope'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_folder(args, message, isolated_home):
    p = run_cli("train", "--preset", "digits-quick", "--quiet", *args) if "--preset" not in args else run_cli("train", "--quiet", *args)
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not isolated_home.exists() or not any(isolated_home.iterdir())


def test_empty_and_corrupt_folders_via_cli(tmp_path):
    (tmp_path / "empty").mkdir()
    p = run_cli("train", "--dataset", "imagefolder", "--dataset-param", f"path={tmp_path / 'empty'}", "--quiet")
    assert p.returncode == 2 and p.stderr.startswith("error: no images found")


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_cli_run():
    p = run_cli("train", "--preset", "fashion-mnist-lt", "--epochs", "1", "--quiet")
    assert p.returncode == 0, p.stderr
    (run,) = list_runs()
    assert run.meta["n_train"] == 14886 and run.eval["balanced_accuracy"] > 0.3


def test_methods_lists_registries(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "ldam" in out and "Cao" in out and "digits-quick" in out


TWO_STAGE = [e.name for e in SCHEDULES.entries() if "changes model" in e.traits]


@pytest.mark.parametrize("schedule", TWO_STAGE)
@pytest.mark.parametrize("sampler, params", [("power", ["--sampler-param", "q=0.5"]), ("meta", ["--sampler-param", "meta_steps=1"])])
def test_two_stage_schedules_train_with_any_sampler_and_its_parameters(schedule, sampler, params, tmp_path):
    """Stage 2 switches to class-balanced sampling without inheriting stage 1's sampler parameters."""
    argv = ["train", "--preset", "digits-quick", "--epochs", "4", "--schedule", schedule, "--sampler", sampler, *params]
    assert main([*argv, "--quiet", "--out", str(tmp_path)]) == 0
    (run,) = list_runs(tmp_path)
    assert run.status == "finished" and [h.get("stage") for h in run.history][-1] == 2
    assert "sampler_rates" not in run.history[-1]  # the meta sampler no longer runs in stage 2
