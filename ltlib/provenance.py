"""What produced a run, recorded in its ``meta.json``: library versions, the source checkout's git commit,
the device, the command line, and a hash of the config.

:func:`config_hash` names a config by its content, so a planner can tell that a run of it is already in
the store (``run.meta["config_hash"]``, equal to ``config_hash(run.config)``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ltlib
from ltlib.config import Config

PACKAGE_DIR = Path(__file__).resolve().parent
GIT_TIMEOUT_SECONDS = 5.0


def _canonical(value: Any) -> Any:
    """``value`` with integral floats as ints, so ``imbalance=100`` and ``--imbalance 100`` (100.0) hash alike."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def config_hash(cfg: Config | Mapping[str, Any]) -> str:
    """The sha256 (hex) of a config's canonical JSON: sorted keys, no spaces, integral floats written as ints.

    Equal configs hash alike in every process; any changed field changes the hash. A ``Config`` and its
    ``to_dict()`` (a run's ``config.json``) give the same hash.
    """
    d = cfg.to_dict() if isinstance(cfg, Config) else cfg
    text = json.dumps(_canonical(d), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _git(*args: str) -> str | None:
    """A git command's output in the package's folder, or None when git is missing, slow or fails."""
    try:
        # --no-optional-locks: reading the status must not rewrite the index under another git process.
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(PACKAGE_DIR), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """The commit of the checkout this package was loaded from and whether it has changes; ``(None, None)`` outside one.

    Only a repository whose top folder holds the package counts: an installed copy inside some other
    repository (a virtual environment in a project) would otherwise report that project's commit.
    """
    out = _git("rev-parse", "--show-toplevel", "HEAD")
    lines = (out or "").split()
    if len(lines) != 2 or Path(lines[0]).resolve() != PACKAGE_DIR.parent:
        return None, None
    status = _git("status", "--porcelain")
    return lines[1], None if status is None else bool(status.strip())


def device_name(device: torch.device | str) -> str:
    """The GPU's name for a CUDA device, else the CPU's model (from /proc/cpuinfo where there is one)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def provenance(cfg: Config | Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The provenance keys of a run's ``meta.json`` (all JSON values)."""
    commit, dirty = git_state()
    return {
        "ltlib": ltlib.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),  # None without cuDNN
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),  # CPU results are byte-identical only at the same thread count
        "argv": list(sys.argv),
        "config_hash": config_hash(cfg),
    }
