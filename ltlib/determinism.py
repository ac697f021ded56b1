"""The process-wide backend settings a run needs, set for its duration and restored after it.

cuDNN's autotuner (``torch.backends.cudnn.benchmark``) and deterministic switch, PyTorch's
deterministic-algorithms mode and the CPU thread count belong to the process, not to a run. A run sets
what it needs; when the last of the runs under way ends, even by an error, the process gets back what it
had, so a notebook or the app that trains keeps its own settings. Overlapping runs (a sweep's threads)
share the settings, so they must agree on ``deterministic``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from types import TracebackType

import torch

# Intra-op threads of a deterministic run: one thread sums in one order on every machine.
DETERMINISTIC_THREADS = 1
# cuBLAS is reproducible only with a fixed workspace; it reads this when its handle is created.
CUBLAS_WORKSPACE = ":4096:8"


@dataclass(frozen=True)
class _Flags:
    benchmark: bool
    cudnn_deterministic: bool
    algorithms: bool
    warn_only: bool
    threads: int
    cublas_workspace: str | None

    @classmethod
    def now(cls) -> _Flags:
        return cls(
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.get_num_threads(),
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        )

    def restore(self) -> None:
        torch.backends.cudnn.benchmark = self.benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.use_deterministic_algorithms(self.algorithms, warn_only=self.warn_only)
        torch.set_num_threads(self.threads)
        if self.cublas_workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = self.cublas_workspace


_lock = threading.Lock()
_active = 0  # runs between apply() and their exit
_mode: bool | None = None  # their shared ``deterministic``
_saved: _Flags | None = None  # the process's settings before the first of them


class BackendFlags:
    """``with BackendFlags() as flags:`` around a run; ``flags.apply(...)`` once its device is known.

    On exit (also by an exception) the last run under way restores what the process had before the first.
    """

    def __init__(self) -> None:
        self.applied = False

    def __enter__(self) -> BackendFlags:
        return self

    def apply(self, deterministic: bool, device: torch.device) -> None:
        """Set the run's flags: reproducible ones when ``deterministic``, else cuDNN's autotuner on a GPU."""
        global _active, _mode, _saved
        with _lock:
            if _active and _mode != deterministic:
                raise ValueError(
                    f"deterministic={deterministic} cannot train while a run with deterministic={_mode} is under way in this "
                    "process (the flags are process-wide); train them one after the other"
                )
            if not _active:
                _saved, _mode = _Flags.now(), deterministic
            _active += 1
            self.applied = True
            if deterministic:
                torch.backends.cudnn.benchmark = False
                torch.backends.cudnn.deterministic = True
                # warn_only: an op without a deterministic kernel warns instead of ending the run.
                torch.use_deterministic_algorithms(True, warn_only=True)
                torch.set_num_threads(DETERMINISTIC_THREADS)
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            elif device.type == "cuda":
                torch.backends.cudnn.benchmark = True  # pick the fastest convolution kernels for these fixed shapes

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        global _active, _mode, _saved
        if not self.applied:
            return
        with _lock:
            _active -= 1
            if _active == 0 and _saved is not None:
                _saved.restore()
                _saved, _mode = None, None
