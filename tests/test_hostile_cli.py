"""Hostile input, kills and concurrent use against the command line (docs/reliability.md).

Every case asserts the observable contract: the exit status, exactly one ``error:`` line that names
the bad value and what is allowed, no traceback, and nothing half-written in the runs store. The
value cases are generated from ``Config``'s fields and every registry's declared parameters, so a
new field or method is covered without a new test.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
from cases import bad_values

from ltlib.cli import main
from ltlib.config import FIELD_RULES, Config
from ltlib.families import FAMILIES
from ltlib.registry import Param
from ltlib.runs import clean_temporaries, list_runs

pytestmark = pytest.mark.hostile

HINTS = typing.get_type_hints(Config)
NAMED = {f.name for f in FAMILIES}  # fields naming a registry entry
BASE = ["train", "--preset", "digits-quick", "--quiet"]


def cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Run the CLI in-process; the exit status and the non-empty lines of stderr."""
    try:
        status = main(argv)
    except SystemExit as e:  # argparse exits by itself
        status = e.code
    return status, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def assert_one_error_line(status: int, lines: list[str], *names: str) -> None:
    assert status == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(n in lines[0] for n in names), (names, lines)
    assert "Traceback" not in lines[0] and " at 0x" not in lines[0] and "np." not in lines[0]


def as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def field_cases() -> list:
    """(flag, text) pairs every config field must refuse."""
    out = []
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        hint = HINTS[f.name]
        if f.name.endswith("_params") or hint is bool:
            continue
        if f.name in NAMED:
            texts = ["nope", "", "../../etc/passwd", "ce;rm -rf /", "x" * 300]
        elif typing.get_origin(hint) is list:
            texts = ["-5", "abc", "1.5", "100000"]
        else:
            default = f.default if f.default is not MISSING else None
            values = bad_values(Param(f.name, default, hint, FIELD_RULES.get(f.name, ())))
            huge = "1e400" if float in (hint, *typing.get_args(hint)) else "1e3"  # inf as a float; not an integer
            texts = [as_text(v) for v in values if not isinstance(v, list | bool)] + ["", huge]
        out += [pytest.param(flag, t, id=f"{f.name}={t[:20]!r}") for t in dict.fromkeys(texts)]
    return out


@pytest.mark.parametrize("flag, text", field_cases())
def test_bad_config_value_is_one_line_before_any_data(flag, text, capsys, tmp_path):
    status, lines = cli([*BASE, "--out", str(tmp_path / "store"), flag, text], capsys)
    assert_one_error_line(status, lines)
    assert flag.lstrip("-").replace("-", "_") in lines[0] or flag in lines[0] or repr(text) in lines[0] or text in lines[0]
    assert not (tmp_path / "store").exists()


def method_cases() -> list:
    out = []
    for fam in FAMILIES:
        for entry in fam.registry.entries():
            for param in entry.params.values():
                for value in bad_values(param):
                    out.append(
                        pytest.param(fam.name, entry.name, param.name, as_text(value), id=f"{fam.name}-{entry.name}-{param.name}={value!r}")
                    )
    return out


@pytest.mark.parametrize("family, name, param, text", method_cases())
def test_bad_method_parameter_is_one_line_naming_it(family, name, param, text, capsys, tmp_path):
    status, lines = cli([*BASE, "--out", str(tmp_path), f"--{family}", name, f"--{family}-param", f"{param}={text}"], capsys)
    assert_one_error_line(status, lines, f"{param}=", "allowed:")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--bogus"], ["--bogus"]),
        (["--epochs"], ["--epochs"]),
        (["--loss-param", "gamma"], ["key=value"]),
        (["--loss-param", "=1"], ["has no parameter"]),
        (["--loss", "focal", "--loss-param", "nope=1"], ["nope"]),
        (["--loss", "focal", "--loss-param", "gamma=1", "--loss-param", "gamma=[1]"], ["gamma="]),
        (["--dataset-param", "n_test_per_class=abc"], ["n_test_per_class="]),
        (["--preset", "nope"], ["nope"]),
        (["--posthoc-tau", "nan"], ["posthoc_tau=nan"]),
        (["--threads", "0"], ["--threads=0"]),
        (["--dataset", "imagefolder"], ["path"]),
        (["--dataset", "imagefolder", "--dataset-param", "path=/no/such/folder"], ["/no/such/folder"]),
        (["--lr-milestones", "40", "--epochs", "30"], ["lr_milestones=[40]"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_command_lines_are_one_line(argv, names, capsys, tmp_path):
    status, lines = cli([*BASE, "--out", str(tmp_path), *argv], capsys)
    assert_one_error_line(status, lines, *names)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv",
    [[], ["frob"], ["show"], ["compare"], ["runs", "--bogus"], ["sweep", "--grid", "nope=1,2"], ["methods", "extra"]],
    ids=lambda v: " ".join(v) or "(none)",
)
def test_bad_sub_commands_are_one_line(argv, capsys):
    status, lines = cli(argv, capsys)
    assert_one_error_line(status, lines)


@pytest.mark.parametrize(
    "grid, names",
    [
        ("imbalance=10,1e9", ["imbalance=1000000000.0", "zero training images"]),
        ("epochs=[1,2]", ["epochs=[1, 2]", "integer"]),
        ("loss=ce,nope", ["unknown loss 'nope'"]),
        ("seed=1,abc", ["seed='abc'"]),
        ("batch_size=8,100000", ["batch_size=100000"]),
    ],
)
def test_a_sweep_checks_every_config_and_its_data_before_training_any(grid, names, capsys, tmp_path):
    status, lines = cli(["sweep", "--preset", "digits-quick", "--epochs", "1", "--out", str(tmp_path), "--grid", grid], capsys)
    assert_one_error_line(status, lines, *names)
    assert not any(tmp_path.iterdir()), "a run was saved before the bad config was found"


# --- kills --------------------------------------------------------------------------------------


def start(argv: list[str], home: Path) -> subprocess.Popen:
    # A shell starts background jobs with SIGINT ignored; a user's Ctrl-C reaches a foreground one.
    return subprocess.Popen(
        [sys.executable, "-m", "ltlib.cli", *argv, "--out", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def assert_store_whole(home: Path) -> list:
    """Every visible run is complete and finished; returns them."""
    runs = list_runs(home) if home.exists() else []
    for run in runs:
        assert run.status == "finished" and run.eval is not None, run.id
        assert (run.path / "arrays.safetensors").exists() and (run.path / "model.safetensors").exists()
    visible = [p for p in home.iterdir() if not p.name.startswith(".")] if home.exists() else []
    assert sorted(p.name for p in visible) == sorted(r.id for r in runs)
    return runs


KILLS = [(sig, round(random.Random(f"{sig}-{i}").uniform(0.5, 5.0), 2)) for sig in ("SIGINT", "SIGTERM", "SIGKILL") for i in range(2)]
KILLS += [("SIGINT", 0.3), ("SIGTERM", 0.8)]  # while the library (torch) is still being imported


@pytest.mark.slow
@pytest.mark.parametrize("sig, delay", KILLS)
def test_a_killed_run_leaves_nothing_half_written(sig, delay, tmp_path):
    home = tmp_path / "store"
    p = start([*BASE, "--epochs", "60"], home)
    time.sleep(delay)
    p.send_signal(getattr(signal, sig))
    out, err = p.communicate(timeout=60)
    runs = assert_store_whole(home)
    assert "Traceback" not in err, err
    if runs:  # the run was saved before the signal came (it may still have hit the exit)
        assert len(runs) == 1 and f"run {runs[0].id}:" in out
    elif sig == "SIGKILL":
        assert p.returncode == -signal.SIGKILL
        clean_temporaries(home) if home.exists() else None  # a dead writer's temporary folder is abandoned
        assert not home.exists() or not any(home.glob(".tmp-*"))
    else:
        assert p.returncode == 130 and err.strip() == "error: interrupted; nothing was saved"
        assert not home.exists() or not any(home.glob(".tmp-*"))


SAVE_SLOWLY = """
import sys, numpy as np
from ltlib.runs import save_run
print("saving", flush=True)
save_run("big-run", {"dataset": "digits"}, {"status": "finished"}, [], {"balanced_accuracy": 0.5},
         {"test_logits": np.zeros((4000, 20000), np.float32)}, None, sys.argv[1])
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_a_kill_while_saving_never_shows_a_half_run(sig, tmp_path):
    home = tmp_path / "store"
    p = subprocess.Popen(
        [sys.executable, "-c", SAVE_SLOWLY, str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert p.stdout.readline().strip() == "saving"
    time.sleep(0.05)  # inside save_run: 320 MB of arrays take a while to write
    p.send_signal(getattr(signal, sig))
    p.communicate(timeout=60)
    assert assert_store_whole(home) == [] or p.returncode == 0
    if sig == "SIGINT":
        assert not any(home.glob(".tmp-*")), "an interrupted save removes its temporary folder"


@pytest.mark.slow
def test_concurrent_runs_into_one_store_never_collide(tmp_path):
    home = tmp_path / "store"
    procs = [start([*BASE, "--epochs", "3", "--seed", str(i)], home) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    runs = assert_store_whole(home)
    assert len(runs) == 3 and len({r.id for r in runs}) == 3
    assert sorted(r.config["seed"] for r in runs) == [0, 1, 2]


@pytest.mark.slow
def test_fixed_thread_count_gives_byte_identical_runs_and_is_recorded(tmp_path):
    home = tmp_path / "store"
    for _ in range(2):
        p = start([*BASE, "--epochs", "5", "--threads", "1"], home)
        assert p.wait(timeout=120) == 0
    a, b = sorted(list_runs(home), key=lambda r: r.id)
    assert a.meta["threads"] == b.meta["threads"] == 1
    assert (a.path / "eval.json").read_bytes() == (b.path / "eval.json").read_bytes()
    assert (a.path / "arrays.safetensors").read_bytes() == (b.path / "arrays.safetensors").read_bytes()
