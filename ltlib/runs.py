"""The run store: every run is a folder of plain files under ``$LTLIB_HOME`` (default ``./runs``).

A run folder holds ``config.json``, ``meta.json`` (status, timings, device), ``metrics.jsonl``
(one line per evaluation), ``eval.json`` (final metrics), ``arrays.safetensors`` (test logits,
labels, features, classifier weights) and ``model.safetensors``. The folder is assembled under a
hidden temporary name and renamed into place, so readers never see half a run; nothing is ever
loaded with pickle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ARRAYS = "arrays.safetensors"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def runs_home(root: str | os.PathLike | None = None) -> Path:
    return Path(root) if root is not None else Path(os.environ.get("LTLIB_HOME", "runs"))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24] or "x"


def new_run_id(dataset: str, loss: str) -> str:
    """Time-ordered id built only from registry names, safe in a path."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(dataset)}-{_slug(loss)}-{uuid.uuid4().hex[:6]}"


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: a temporary file renamed over the target."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"cannot store {type(o).__name__} in JSON")


@dataclass
class Run:
    """A saved run, read back from its folder (arrays load lazily)."""

    id: str
    path: Path
    config: dict[str, Any]
    meta: dict[str, Any]
    eval: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    _arrays: dict[str, np.ndarray] | None = None

    @property
    def status(self) -> str:
        return self.meta.get("status", "unknown")

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Test logits/labels, features, classifier weights … as numpy arrays."""
        if self._arrays is None:
            from safetensors.numpy import load_file

            f = self.path / ARRAYS
            self._arrays = load_file(str(f)) if f.exists() else {}
        return self._arrays

    def state_dict(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(str(self.path / "model.safetensors"))


def save_run(
    run_id: str,
    config: dict[str, Any],
    meta: dict[str, Any],
    history: list[dict[str, Any]],
    final: dict[str, Any] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    state_dict: dict[str, Any] | None = None,
    root: str | os.PathLike | None = None,
) -> Path:
    """Write a complete run folder atomically and return its path."""
    if not _ID.match(run_id):
        raise ValueError(f"run id {run_id!r} is not allowed; use letters, digits, '_', '.', '-'")
    home = runs_home(root)
    home.mkdir(parents=True, exist_ok=True)
    target = home / run_id
    if target.exists():
        raise ValueError(f"run {run_id!r} already exists in {home}")
    tmp = home / f".tmp-{run_id}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        write_json(tmp / "config.json", config)
        write_json(tmp / "meta.json", meta)
        (tmp / "metrics.jsonl").write_text("".join(json.dumps(h, default=_jsonable) + "\n" for h in history))
        if final is not None:
            write_json(tmp / "eval.json", final)
        if arrays:
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / ARRAYS))
        if state_dict is not None:
            from safetensors.torch import save_file as save_torch

            save_torch({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp / "model.safetensors"))
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_run(run_id: str | os.PathLike, root: str | os.PathLike | None = None) -> Run:
    """Load a run by id (or by folder path)."""
    path = Path(run_id)
    if not (path.is_dir() and (path / "config.json").exists()):
        if not _ID.match(str(run_id)):
            raise ValueError(f"run id {str(run_id)!r} is not a valid run id")
        path = runs_home(root) / str(run_id)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no run {str(run_id)!r} in {runs_home(root)}")
    read = lambda name: json.loads((path / name).read_text()) if (path / name).exists() else None  # noqa: E731
    history_file = path / "metrics.jsonl"
    history = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()] if history_file.exists() else []
    return Run(path.name, path, read("config.json"), read("meta.json") or {}, read("eval.json"), history)


def list_runs(root: str | os.PathLike | None = None) -> list[Run]:
    """Every complete run under the runs folder, newest first (temporary folders are skipped)."""
    home = runs_home(root)
    if not home.is_dir():
        return []
    runs = [load_run(p.name, home) for p in home.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "config.json").exists()]
    return sorted(runs, key=lambda r: r.meta.get("created", 0), reverse=True)


def delete_run(run_id: str, root: str | os.PathLike | None = None) -> None:
    run = load_run(run_id, root)
    shutil.rmtree(run.path)
