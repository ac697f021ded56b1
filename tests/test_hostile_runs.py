"""Hostile input for the run store: every file of a run broken in every way we can enumerate.

One real run is trained per module and copied; each test breaks a copy and checks that listing
still shows every good run and names the broken one, that the CLI answers with one line (never a
traceback), that saving is ordered and durable, that ``--clean`` removes only abandoned
temporaries, and that no crafted file can run code.
"""

from __future__ import annotations

import ast
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from ltlib import runs
from ltlib.cli import main
from ltlib.presets import preset
from ltlib.runs import (
    ARRAYS,
    MODEL,
    CorruptRun,
    abandoned_temporaries,
    check_store,
    clean_temporaries,
    list_runs,
    load_run,
    save_run,
    scan_runs,
    write_json,
)
from ltlib.train import train
from tests.conftest import ROOT

pytestmark = pytest.mark.hostile

JSON_FILES = ("config.json", "meta.json", "eval.json", "metrics.jsonl")
TENSOR_FILES = (ARRAYS, MODEL)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One real finished run, trained once for the module; tests break copies of it."""
    return train(preset("digits-quick", epochs=1), root=tmp_path_factory.mktemp("trained")).path


@pytest.fixture
def store(trained, isolated_home) -> Path:
    """The test's runs folder with three copies of the run: ``good``, ``other`` and ``bad`` (to break)."""
    for name in ("good", "other", "bad"):
        shutil.copytree(trained, isolated_home / name)
    return isolated_home


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


# ----------------------------------------------------------------------------- ways to break a file


def _header(text: str) -> bytes:
    """A safetensors file made of just this header (8-byte little-endian length, then the header)."""
    return len(text.encode()).to_bytes(8, "little") + text.encode()


def _directory(p: Path) -> None:
    p.unlink()
    p.mkdir()
    (p / "inside").write_text("a folder where a file should be")


def _literal(word: str) -> Callable[[Path], None]:
    """Put a non-JSON number literal (NaN, Infinity) in place of the first number of the file."""

    def corrupt(p: Path) -> None:
        if p.suffix == ".safetensors":
            p.write_bytes(_header(f'{{"x": {word}}}'))
        else:
            text, n = re.subn(r'(":\s*)-?\d[\d.eE+-]*', rf"\g<1>{word}", p.read_text(), count=1)
            assert n == 1
            p.write_text(text)

    return corrupt


KINDS: dict[str, Callable[[Path], None]] = {
    "missing": lambda p: p.unlink(),
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage-bytes": lambda p: p.write_bytes(bytes(range(256))[::-1] * 8),
    "garbage-text": lambda p: p.write_text("}{ this is not what belongs here"),
    "json-list": lambda p: p.write_bytes(_header("[1, 2]") if p.suffix == ".safetensors" else b"[1, 2]\n"),
    "nan-literal": _literal("NaN"),
    "directory": _directory,
}
JSON_PROBLEMS = {
    "missing": "missing",
    "empty": "is empty",
    "truncated": "invalid JSON",
    "garbage-bytes": "is not UTF-8 text",
    "garbage-text": "invalid JSON",
    "json-list": "expected a JSON object, found a list",
    "nan-literal": "NaN is not valid JSON",
    "directory": "is a folder, not a file",
}


def _edit_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Change the parsed file in place and write it back as valid JSON."""

    def corrupt(p: Path) -> None:
        obj = json.loads(p.read_text())
        change(obj)
        p.write_text(json.dumps(obj))

    return corrupt


def _edit_arrays(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def corrupt(p: Path) -> None:
        a = load_file(str(p))
        change(a)
        p.unlink()
        save_file(a, str(p))

    return corrupt


def _append(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(p.read_bytes() + data)


def _short_lists(e: dict) -> None:
    for k in ("class_counts", "per_class_accuracy", "per_class_margin"):
        e[k] = e[k][:3]


@dataclass
class Case:
    id: str
    file: str  # the file that is broken
    corrupt: Callable[[Path], None]
    problem: str | None  # what the error must say; None: the run is still good
    named: str | None = None  # the file the error names, when not ``file``


CASES = [
    *(
        Case(f"{f}-{k}", f, fn, None if (f, k) == ("metrics.jsonl", "empty") else JSON_PROBLEMS[k])
        for f in JSON_FILES
        for k, fn in KINDS.items()
    ),
    *(
        Case(f"{f}-{k}", f, fn, {"missing": "missing", "directory": "is a folder, not a file"}.get(k, "is not a valid safetensors file"))
        for f in TENSOR_FILES
        for k, fn in KINDS.items()
    ),
    # Valid JSON, wrong content.
    Case("config.json-no-keys", "config.json", lambda p: p.write_text("{}"), "missing key(s) dataset, loss, imbalance"),
    Case("config.json-dataset-number", "config.json", _edit_json(lambda c: c.update(dataset=3)), "dataset is a number, expected a string"),
    Case("config.json-infinity", "config.json", _literal("Infinity"), "Infinity is not valid JSON"),
    Case("config.json-nested-deep", "config.json", lambda p: p.write_text("[" * 100_000), "nested too deeply"),
    Case("config.json-string", "config.json", lambda p: p.write_text('"digits"'), "expected a JSON object, found a string"),
    Case("meta.json-no-keys", "meta.json", lambda p: p.write_text("{}"), "missing key(s) status"),
    Case("meta.json-status-number", "meta.json", _edit_json(lambda m: m.update(status=1)), "status is a number, expected a string"),
    Case("meta.json-created-string", "meta.json", _edit_json(lambda m: m.update(created="yesterday")), "created is a string"),
    Case("meta.json-class-names-string", "meta.json", _edit_json(lambda m: m.update(class_names="abc")), "class_names is a string"),
    Case("meta.json-minus-infinity", "meta.json", _literal("-Infinity"), "-Infinity is not valid JSON"),
    Case(
        "meta.json-three-class-names",
        "meta.json",
        _edit_json(lambda m: m.update(class_names=["a", "b", "c"])),
        "per-class lists have 10 entries but meta.json names 3 classes",
        named="eval.json",
    ),
    Case("eval.json-no-keys", "eval.json", lambda p: p.write_text("{}"), "missing key(s) accuracy, balanced_accuracy"),
    Case("eval.json-no-nll", "eval.json", _edit_json(lambda e: e.pop("nll")), "missing key(s) nll"),
    Case("eval.json-null", "eval.json", lambda p: p.write_text("null"), "expected a JSON object, found null"),
    Case(
        "eval.json-short-list",
        "eval.json",
        _edit_json(lambda e: e.update(per_class_accuracy=e["per_class_accuracy"][:3])),
        "per_class_accuracy has 3",
    ),
    Case("eval.json-all-lists-short", "eval.json", _edit_json(_short_lists), "per-class lists have 3 entries but meta.json names 10"),
    Case(
        "eval.json-empty-lists",
        "eval.json",
        _edit_json(lambda e: e.update(class_counts=[], per_class_accuracy=[], per_class_margin=[])),
        "class_counts has 0",
    ),
    Case(
        "eval.json-negative-count", "eval.json", _edit_json(lambda e: e["class_counts"].__setitem__(0, -1)), "class_counts must be counts"
    ),
    Case(
        "eval.json-accuracy-string", "eval.json", _edit_json(lambda e: e.update(accuracy="high")), "accuracy is a string, expected a number"
    ),
    Case("eval.json-accuracy-bool", "eval.json", _edit_json(lambda e: e.update(accuracy=True)), "accuracy is a boolean, expected a number"),
    Case("eval.json-margins-string", "eval.json", _edit_json(lambda e: e.update(per_class_margin="x")), "per_class_margin is a string"),
    Case("eval.json-group-rule-number", "eval.json", _edit_json(lambda e: e.update(group_rule=5)), "group_rule is a number"),
    Case("metrics.jsonl-bad-second-line", "metrics.jsonl", _append(b"{oops\n"), "invalid JSON on line 2"),
    Case("metrics.jsonl-string-line", "metrics.jsonl", _append(b'"epoch"\n'), "line 2: expected a JSON object, found a string"),
    Case("metrics.jsonl-infinity", "metrics.jsonl", _literal("Infinity"), "Infinity is not valid JSON"),
    Case("metrics.jsonl-blank-lines", "metrics.jsonl", _append(b"\n \n"), None),
    # Valid safetensors, wrong content.
    Case("arrays-no-logits", ARRAYS, _edit_arrays(lambda a: a.pop("test_logits")), "missing array(s) test_logits"),
    Case(
        "arrays-seven-classes",
        ARRAYS,
        _edit_arrays(lambda a: a.update(test_logits=a["test_logits"][:, :7].copy())),
        "test_logits has shape [500, 7]",
    ),
    Case(
        "arrays-float-labels", ARRAYS, _edit_arrays(lambda a: a.update(test_labels=a["test_labels"].astype(np.float32))), "must be integers"
    ),
    Case(
        "arrays-short-labels",
        ARRAYS,
        _edit_arrays(lambda a: a.update(test_labels=a["test_labels"][:9].copy())),
        "test_labels has shape [9]",
    ),
    Case("arrays-3d-features", ARRAYS, _edit_arrays(lambda a: a.update(features=a["features"][:, :, None].copy())), "features has shape"),
    Case("arrays-trailing-bytes", ARRAYS, _append(b"tail"), "is not a valid safetensors file"),
    Case("model-trailing-bytes", MODEL, _append(b"tail"), "is not a valid safetensors file"),
    Case(
        "model-huge-header-length", MODEL, lambda p: p.write_bytes((2**62).to_bytes(8, "little") + b"{}"), "is not a valid safetensors file"
    ),
]


def test_there_are_many_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_one_broken_file_is_named_and_hides_no_other_run(store, case, capsys):
    case.corrupt(store / "bad" / case.file)
    scan = scan_runs()
    if case.problem is None:  # still a valid run
        assert sorted(r.id for r in scan.runs) == ["bad", "good", "other"] and not scan.corrupt
        assert cli(capsys, "show", "bad")[0] == 0
        return

    assert sorted(r.id for r in scan.runs) == ["good", "other"] == sorted(r.id for r in list_runs())
    (error,) = scan.corrupt
    assert isinstance(error, ValueError) and error.folder == store / "bad"
    assert error.path == store / "bad" / (case.named or case.file) and case.problem in error.problem
    with pytest.raises(CorruptRun, match=re.escape(str(error))):
        load_run("bad")

    rc, out, err = cli(capsys, "runs")
    assert rc == 0
    assert sorted(line.split()[0] for line in out.splitlines()[1:]) == ["good", "other"]
    assert err.splitlines() == [f"warning: corrupt run bad: {error}"]

    for args in (["show", "bad"], ["compare", "good", "bad"], ["show", str(store / "bad")]):
        rc, out, err = cli(capsys, *args)
        assert (rc, out, err.splitlines()) == (2, "", [f"error: {error}"])
    assert cli(capsys, "show", "good")[0] == 0


# ----------------------------------------------------------------------------- tensors that break after listing


@pytest.mark.parametrize("kind", ["missing", "truncated", "garbage-bytes", "json-list", "directory"])
@pytest.mark.parametrize("what", ["arrays", "state_dict"])
def test_tensors_that_break_after_loading_raise_corrupt_run(store, what, kind):
    """The app lists runs first and loads tensors later: a file broken in between is a CorruptRun naming it."""
    run = load_run("bad")
    file = store / "bad" / (ARRAYS if what == "arrays" else MODEL)
    KINDS[kind](file)
    with pytest.raises(CorruptRun, match=re.escape(str(file))):
        run.arrays if what == "arrays" else run.state_dict()


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("test_labels", 10, "test_labels has values outside 0 … 9"),
        ("test_labels", -1, "test_labels has values outside 0 … 9"),
        ("feature_index", 500, "feature_index has values outside 0 … 499"),
    ],
)
def test_indices_outside_the_arrays_are_refused_when_loaded(store, key, value, problem):
    _edit_arrays(lambda a: a[key].__setitem__(0, value))(store / "bad" / ARRAYS)
    run = load_run("bad")  # the header is whole: the run is listed …
    with pytest.raises(CorruptRun, match=problem):
        run.arrays  # noqa: B018  … and refused once its values are read


# ----------------------------------------------------------------------------- no code from files


class _Payload:
    """Unpickling this creates a marker folder: proof that a file ran code."""

    marker = ""

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("fmt", ["pickle", "torch-save"])
@pytest.mark.parametrize("file", [*JSON_FILES, *TENSOR_FILES])
def test_a_pickle_in_any_file_never_runs(store, tmp_path, file, fmt):
    marker = tmp_path / "code-ran"
    _Payload.marker = str(marker)
    target = store / "bad" / file
    if fmt == "pickle":
        target.write_bytes(pickle.dumps({"w": _Payload()}))
    else:
        torch.save({"w": _Payload()}, target)
    assert [e.path for e in scan_runs().corrupt] == [target]
    with pytest.raises(CorruptRun):
        load_run("bad")
    run = load_run("good")
    shutil.copy(target, run.path / file)  # also behind an already-loaded run
    with pytest.raises(CorruptRun):
        run.arrays if file == ARRAYS else run.state_dict() if file == MODEL else load_run("good")
    assert not marker.exists()


def test_the_run_store_has_no_unpickling_loader():
    tree = ast.parse((ROOT / "ltlib" / "runs.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    loads = {
        f"{n.func.value.id}.{n.func.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
    }
    assert not loads & {"torch.load", "np.load", "numpy.load", "pickle.load", "pickle.loads"}


# ----------------------------------------------------------------------------- strict JSON


def _strict(text: str) -> object:
    def reject(name: str) -> None:
        raise AssertionError(f"{name} in a written file")

    return json.loads(text, parse_constant=reject)


def test_non_finite_numbers_are_written_as_null_and_read_back_as_nan(isolated_home, capsys):
    nan, inf = float("nan"), float("inf")
    config = {"dataset": "digits", "loss": "ce", "imbalance": 10, "lr": inf, "pair": (1, np.float32("nan")), "arr": np.array([1.0, -inf])}
    meta = {"status": "failed", "error": "loss became nan", "created": 1.0, "best": np.float64(-inf)}
    path = save_run("strict", config, meta, [{"epoch": 1, "loss": nan}, {"epoch": 2, "loss": np.float32(inf)}])
    assert _strict((path / "config.json").read_text()) == {**config, "lr": None, "pair": [1, None], "arr": [1.0, None]}
    assert _strict((path / "meta.json").read_text())["best"] is None
    lines = [_strict(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"epoch": 1, "loss": None}, {"epoch": 2, "loss": None}]
    run = load_run("strict")
    assert all(math.isnan(h["loss"]) for h in run.history) and run.config["lr"] is None

    json_file = isolated_home / "x.json"
    write_json(json_file, {"a": nan, "b": [inf, 1]})
    assert _strict(json_file.read_text()) == {"a": None, "b": [None, 1]}
    with pytest.raises(TypeError, match="cannot store object"):
        write_json(json_file, {"a": object()})
    assert sorted(p.name for p in isolated_home.iterdir()) == ["strict", "x.json"]  # no temporary left


def test_a_class_without_test_images_round_trips_as_nan(store, capsys):
    e = json.loads((store / "bad" / "eval.json").read_text())
    e["per_class_accuracy"][9] = float("nan")
    (store / "bad" / "eval.json").unlink()
    write_json(store / "bad" / "eval.json", e)
    assert '"per_class_accuracy"' in (text := (store / "bad" / "eval.json").read_text()) and "NaN" not in text
    assert math.isnan(load_run("bad").eval["per_class_accuracy"][9])
    rc, out, _ = cli(capsys, "show", "bad")
    assert rc == 0 and "nan" in out.splitlines()[10]


# ----------------------------------------------------------------------------- saving: order, durability, interruption


def _tiny_save(run_id: str = "tiny", **kw) -> Path:
    return save_run(
        run_id,
        {"dataset": "digits", "loss": "ce", "imbalance": 10},
        {"status": "failed", "error": None},
        [{"epoch": 1}],
        final=kw.get("final", {"x": 1}),
        arrays={"a": np.zeros(3, np.float32)},
        state_dict={"w": torch.zeros(2)},
        root=kw.get("root"),
    )


def test_save_syncs_every_file_writes_meta_last_and_syncs_around_the_rename(isolated_home, monkeypatch):
    events: list[tuple[str, str]] = []
    write, sync_dir, rename, fsync = runs._write_synced, runs._fsync_dir, os.rename, os.fsync
    monkeypatch.setattr(runs, "_write_synced", lambda p, d: (events.append(("write", p.name)), write(p, d))[1])
    monkeypatch.setattr(runs, "_fsync_dir", lambda p: (events.append(("sync-dir", p.name)), sync_dir(p))[1])
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", Path(b).name)), rename(a, b))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", "")), fsync(fd))[1])
    _tiny_save()
    writes = [name for kind, name in events if kind == "write"]
    assert sorted(writes) == sorted(["config.json", "metrics.jsonl", "eval.json", ARRAYS, MODEL, "meta.json"]) and writes[-1] == "meta.json"
    # Each file is fsynced right after it is written; then the folder, the rename, the parent.
    assert [k for k, _ in events] == ["write", "fsync"] * 6 + ["sync-dir", "fsync", "rename", "sync-dir", "fsync"]
    tail = [e for e in events if e[0] != "fsync"][-3:]
    assert tail[0][1].startswith(f".tmp-{os.getpid()}.") and tail[1:] == [("rename", "tiny"), ("sync-dir", isolated_home.name)]


@pytest.mark.parametrize("fail_at", ["config.json", ARRAYS, "meta.json"])
def test_a_save_that_fails_midway_leaves_nothing(isolated_home, monkeypatch, fail_at):
    write = runs._write_synced

    def failing(p: Path, data: bytes) -> None:
        if p.name == fail_at:
            raise KeyboardInterrupt
        write(p, data)

    monkeypatch.setattr(runs, "_write_synced", failing)
    with pytest.raises(KeyboardInterrupt):
        _tiny_save()
    assert list(isolated_home.iterdir()) == []


# ----------------------------------------------------------------------------- abandoned temporaries


def _backdate(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    for p in [*(path.iterdir() if path.is_dir() else []), path]:
        os.utime(p, (when, when), follow_symlinks=False)


def _temp_folder(path: Path) -> Path:
    """A temporary like the one a killed save leaves: its meta.json already says finished."""
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "meta.json").write_text('{"status": "finished"}')
    return path


def test_clean_removes_abandoned_temporaries_and_keeps_live_ones_and_runs(store, tmp_path, capsys):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    host, me = runs._host(), os.getpid()
    abandoned = [
        _temp_folder(store / f".tmp-{gone}.{host}.abc123.run-1"),  # its writer has exited
        _temp_folder(store / ".tmp-run-2-abc123"),  # an older name without an owner, an hour old
        _temp_folder(store / f".tmp-{me}.{host}.abc123.run-3"),  # a live pid, but two days old: a reused pid
        store / ".meta.json.1234abcd.tmp",
        store / "good" / ".eval.json.1234abcd.tmp",
        store / "good" / ".embedding-pca.npy.abc123.tmp.npy",
    ]
    kept = [
        _temp_folder(store / f".tmp-{me}.{host}.abc123.run-4"),  # being written by this process
        _temp_folder(store / f".tmp-{gone}.another-host.abc123.run-5"),  # another host's writer, recent
        _temp_folder(store / ".tmp-run-6-abc123"),  # no owner, recent
        store / ".fresh.json.1234abcd.tmp",
        store / ".tmp-link",  # a symlink is never followed or removed
        store / "notes.tmp",  # not hidden: not ours
    ]
    for p in (*abandoned[3:], *kept[3:4], kept[5]):
        p.write_text("{")
    (tmp_path / "elsewhere").mkdir()
    kept[4].symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    for p in abandoned[1:]:
        _backdate(p, 2 * 24 * 3600 if p.name.endswith("run-3") else 3600)
    _backdate(tmp_path / "elsewhere", 3600)

    assert abandoned_temporaries() == sorted(abandoned)
    rc, _, err = cli(capsys, "runs")
    assert rc == 0 and err.splitlines() == [
        f"note: 6 abandoned temporaries of interrupted saves in {store}; `ltlib runs --clean` removes them"
    ]
    rc, out, err = cli(capsys, "runs", "--clean")
    assert rc == 0 and err.splitlines() == ["removed 6 abandoned temporaries of interrupted saves"]
    assert sorted(line.split()[0] for line in out.splitlines()[1:]) == ["bad", "good", "other"]
    assert not any(os.path.lexists(p) for p in abandoned) and all(os.path.lexists(p) for p in kept)
    assert (tmp_path / "elsewhere").is_dir()
    assert cli(capsys, "runs")[2] == "" and clean_temporaries() == 0
    assert sorted(r.id for r in list_runs()) == ["bad", "good", "other"]


# ----------------------------------------------------------------------------- the store path and unknown runs


def test_a_store_path_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    file = tmp_path / "results.csv"
    file.write_text("x")
    for root in (file, file / "sub"):
        with pytest.raises(ValueError, match=re.escape(f"{file} is a file, not a folder")):
            check_store(root)
        with pytest.raises(ValueError, match="is a file, not a folder"):
            _tiny_save(root=root)
        rc, out, err = cli(capsys, "runs", "--out", str(root))
        assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert file.read_text() == "x"
    assert check_store(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper" and not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "no-such-run"], "no run 'no-such-run'"),
        (["show", "../../no/such/run"], "not a valid run id"),
        (["show", "{elsewhere}"], "is not a run folder"),
        (["show", "plain-file"], "plain-file is not a run folder"),
        (["show", "empty-folder"], "empty-folder is not a run folder"),
        (["compare", "good", "no-such-run"], "no run 'no-such-run'"),
        (["compare", "good", "plain-file"], "plain-file is not a run folder"),
    ],
)
def test_show_and_compare_of_what_is_not_a_run_print_one_line(store, tmp_path, capsys, args, message):
    (store / "plain-file").write_text("{}")
    (store / "empty-folder").mkdir()
    (tmp_path / "elsewhere").mkdir()
    rc, out, err = cli(capsys, *[a.format(elsewhere=tmp_path / "elsewhere") for a in args])
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert sorted(r.id for r in list_runs()) == ["bad", "good", "other"]  # neither is listed, neither breaks listing


def test_oversized_json_is_not_read(store, monkeypatch):
    monkeypatch.setattr(runs, "MAX_JSON_BYTES", 100)
    with pytest.raises(CorruptRun, match="too large"):
        load_run("bad")


def test_delete_removes_a_corrupt_run(store):
    KINDS["garbage-bytes"](store / "bad" / "eval.json")
    runs.delete_run("bad")
    assert not (store / "bad").exists() and not scan_runs().corrupt


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda c: c.update(bogus=1), "unknown config field(s) bogus"),
        (lambda c: c.update(epochs=0), "epochs=0"),
        (lambda c: c.update(dataset="toy2d", dataset_params={"num_classes": 1}), "num_classes"),
        (lambda c: c.update(dataset_params="big"), "dataset_params"),
    ],
)
def test_a_saved_config_is_validated_before_it_rebuilds_anything(store, change, problem):
    _edit_json(change)(store / "bad" / "config.json")
    run = load_run("bad")  # readable, so listed …
    with pytest.raises(CorruptRun, match=re.escape(problem)) as e:
        run.checked_config()  # … but not rebuilt
    assert str(e.value).startswith(f"{store / 'bad' / 'config.json'}: cannot rebuild this run")
    assert load_run("good").checked_config().dataset == "digits"


# ----------------------------------------------------------------------------- the app


@pytest.fixture
def app_test(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.syspath_prepend(str(ROOT / "app"))  # the app's shared helpers (common.py)
    monkeypatch.setenv("LTLIB_UMAP_WARM_UP", "0")

    def start(page: str) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=60)
        at.run()
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, at.exception
        return at

    return start


@pytest.mark.parametrize("page", ["per_class", "margins", "embeddings", "calibration"])
def test_run_pages_show_one_error_line_for_arrays_that_do_not_load(store, app_test, page):
    shutil.rmtree(store / "good")
    shutil.rmtree(store / "other")
    _edit_arrays(lambda a: a["test_labels"].__setitem__(0, 99))(store / "bad" / ARRAYS)
    at = app_test(page)
    assert [e.value for e in at.error] == [f"This run cannot be shown: {store / 'bad' / ARRAYS}: test_labels has values outside 0 … 9"]


def test_run_pages_skip_a_corrupt_run(store, app_test):
    KINDS["truncated"](store / "bad" / ARRAYS)
    at = app_test("per_class")
    assert len(at.selectbox(key="w_run").options) == 2 and not at.error


def test_embeddings_page_refuses_an_invalid_saved_config_in_one_line(store, app_test):
    shutil.rmtree(store / "good")
    shutil.rmtree(store / "other")
    _edit_json(lambda c: c.update(dataset="toy2d", dataset_params={"num_classes": 1}))(store / "bad" / "config.json")
    at = app_test("embeddings")
    (error,) = at.error
    assert error.value.startswith(f"Cannot draw the decision regions: {store / 'bad' / 'config.json'}: cannot rebuild this run")
