"""Provenance in meta.json, config hashes, the one runs store, deterministic mode and its restored flags, offline data."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import fields, replace

import platformdirs
import pytest
import torch

import ltlib
from ltlib import data, provenance
from ltlib.cli import main
from ltlib.config import Config
from ltlib.determinism import DETERMINISTIC_THREADS, BackendFlags
from ltlib.presets import preset
from ltlib.provenance import config_hash
from ltlib.runs import list_runs, load_run, runs_home
from ltlib.sweep import train_many
from ltlib.train import train

PROVENANCE_TYPES = {
    "ltlib": str,
    "git_commit": (str, type(None)),
    "git_dirty": (bool, type(None)),
    "python": str,
    "torch": str,
    "numpy": str,
    "cuda": (str, type(None)),
    "cudnn": (int, type(None)),
    "device_name": str,
    "threads": int,
    "argv": list,
    "config_hash": str,
}


def quick(**kw):
    return preset("digits-quick", **{"epochs": 1, **kw})


def flags():
    return (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.get_num_threads(),
    )


def test_meta_records_full_provenance():
    run = load_run(train(quick()).path)
    meta = run.meta
    for key, kind in PROVENANCE_TYPES.items():
        assert isinstance(meta[key], kind), f"{key}={meta[key]!r}"
    assert meta["ltlib"] == ltlib.__version__ and meta["python"] == ".".join(map(str, sys.version_info[:3]))
    assert meta["argv"] == sys.argv and meta["device_name"] and meta["threads"] >= 1
    assert meta["config_hash"] == config_hash(run.config) and re.fullmatch(r"[0-9a-f]{64}", meta["config_hash"])
    # This checkout is a git repository (where git is installed); a commit always comes with its dirty flag.
    assert (meta["git_commit"] is None) == (meta["git_dirty"] is None)
    if meta["git_commit"] is not None:
        assert re.fullmatch(r"[0-9a-f]{40}", meta["git_commit"])


def test_git_state_is_none_outside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path / "ltlib")
    assert provenance.git_state() == (None, None)
    if shutil.which("git"):  # an installed copy inside some other repository must not report that one's commit
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path / "venv" / "site-packages" / "ltlib")
        provenance.PACKAGE_DIR.mkdir(parents=True)
        assert provenance.git_state() == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert provenance.git_state() == (None, None)


def _changed(value):
    """A different value of the same kind, for every type a Config field has."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1.5
    if isinstance(value, str):
        return value + "-x"
    if isinstance(value, dict):
        return {**value, "k": 1}
    if isinstance(value, list):
        return [*value, 7]
    assert value is None, value
    return 1.0


def test_config_hash_changes_with_every_field_and_ignores_the_form():
    base = Config()
    hashes = {config_hash(base)}
    for f in fields(Config):
        hashes.add(config_hash(replace(base, **{f.name: _changed(getattr(base, f.name))})))
    assert len(hashes) == len(fields(Config)) + 1
    assert config_hash(base) == config_hash(base.to_dict()) == config_hash(json.loads(json.dumps(base.to_dict())))
    # --imbalance 100 (a float) and imbalance=100 (an int) are the same run; key order does not matter.
    assert config_hash(replace(base, imbalance=100)) == config_hash(replace(base, imbalance=100.0))
    assert config_hash(dict(reversed(base.to_dict().items()))) == config_hash(base)


def test_config_hash_is_stable_across_processes():
    cfg = preset("cifar10-lt", loss="ldam", loss_params={"s": 30.0, "max_m": 0.5}, lr_milestones=[160, 180])
    script = (
        "import json, sys; from ltlib.config import Config; from ltlib.provenance import config_hash; "
        "print(config_hash(Config.from_dict(json.loads(sys.argv[1]))))"
    )
    # Another process, with another string-hash seed than this one's (random unless set).
    env = {**os.environ, "PYTHONHASHSEED": str(int(os.environ.get("PYTHONHASHSEED") or 0) + 1)}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(cfg.to_dict())], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip() == config_hash(cfg)


@pytest.mark.skipif(sys.platform != "linux", reason="moves the store with XDG_DATA_HOME, which platformdirs reads on Linux")
def test_runs_land_in_one_store_whatever_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LTLIB_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    store = runs_home()
    assert store == tmp_path / "xdg" / "ltlib" / "runs" == platformdirs.user_data_path("ltlib") / "runs"
    ids = []
    for cwd in ("a", "b"):
        (tmp_path / cwd).mkdir()
        monkeypatch.chdir(tmp_path / cwd)
        ids.append(train(quick()).path.name)
        assert not (tmp_path / cwd / "runs").exists()
    assert sorted(r.id for r in list_runs()) == sorted(ids) and all((store / i).is_dir() for i in ids)
    assert main(["runs"]) == 0  # the CLI reads the same store
    listed = capsys.readouterr().out
    assert all(i in listed for i in ids)


def test_deterministic_run_sets_flags_for_its_duration_and_restores_them():
    before = flags()
    seen = []
    a = train(quick(deterministic=True, epochs=2), callbacks=[lambda e: seen.append(flags()) if e.kind == "epoch" else None])
    assert seen == [(False, True, True, DETERMINISTIC_THREADS)] * 2
    assert flags() == before
    assert a.eval == train(quick(deterministic=True, epochs=2), save=False).eval
    assert json.loads((a.path / "config.json").read_text())["deterministic"] is True
    assert json.loads((a.path / "meta.json").read_text())["threads"] == DETERMINISTIC_THREADS


def test_flags_are_restored_after_a_failing_run(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # a notebook's own choice, kept after the run
    before = flags()

    def fail(event):
        if event.kind == "epoch":
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train(quick(deterministic=True, epochs=2), callbacks=[fail])
    assert flags() == before


def test_flags_of_overlapping_runs_are_restored_by_the_last(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cuda = torch.device("cuda")  # only the flag is set: nothing touches a GPU
    with BackendFlags() as first:
        first.apply(False, cuda)
        assert torch.backends.cudnn.benchmark  # the GPU speed path: cuDNN autotunes a non-deterministic CUDA run
        with BackendFlags() as second:
            second.apply(False, cuda)
        assert torch.backends.cudnn.benchmark  # the first run is still under way
        with pytest.raises(ValueError, match="deterministic=True cannot train while"), BackendFlags() as third:
            third.apply(True, cuda)
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark


def test_a_concurrent_sweep_must_agree_on_deterministic(isolated_home):
    with pytest.raises(ValueError, match="concurrent runs must agree on deterministic"):
        train_many([quick(deterministic=True), quick()], concurrent=True)
    assert not isolated_home.exists()


@pytest.mark.parametrize(
    "name, param, patch",
    [("cifar10", "path", "CHECKOUT_DATA_DIRS"), ("fashion-mnist", "root", "FASHION_MNIST_DIR")],
)
def test_a_failed_download_is_one_line_naming_the_parameter(name, param, patch, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, patch, () if patch == "CHECKOUT_DATA_DIRS" else tmp_path / "absent")
    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    # Offline for certain, also on a machine with a network: no name resolves.
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(ValueError) as e:
        data.load_dataset(name)
    message = str(e.value)
    assert "\n" not in message and f"--dataset-param {param}=" in message and str(tmp_path / "data") in message
    assert main(["train", "--dataset", name, "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"--dataset-param {param}=" in err[0]
