"""The run store: every run is a folder of plain files under ``$LTLIB_HOME`` (default: ``runs`` in the user's
data folder, ``platformdirs.user_data_dir("ltlib")``, the same wherever the CLI, the app or a notebook starts).

A run folder holds ``config.json``, ``meta.json`` (status, timings, device, provenance), ``metrics.jsonl``
(one line per evaluation), ``eval.json`` (final metrics), ``arrays.safetensors`` (test logits,
labels, features, classifier weights, the input normalisation) and ``model.safetensors``;
:func:`load_model` rebuilds the trained model from them, for inference on raw inputs.

Saving is crash-safe: the files are written into a hidden temporary folder named after the writing
process (``.tmp-<pid>.<host>.<hex>.<run id>``), each one fsynced, ``meta.json`` last; then the folder is
fsynced, renamed into place and its parent fsynced, so readers never see half a run. A save killed
midway leaves only the temporary folder, which ``clean_temporaries`` (``ltlib runs --clean``) removes.

Reading is tolerant: ``scan_runs`` returns the good runs and reports each broken one as a
:class:`CorruptRun` (a ``ValueError`` naming the file and the problem), so one bad folder hides
nothing else; ``load_run`` raises it. A run is either whole or corrupt: every file it needs is
checked when it is loaded (the safetensors files by their headers; their tensors load lazily).

JSON is strict: every file is written with ``allow_nan=False``. A non-finite float (the accuracy of a
class with no test images, a diverged loss) is stored as ``null``, and in ``eval.json`` and
``metrics.jsonl`` (files of numbers) ``null`` reads back as NaN; ``NaN``/``Infinity`` literals are
not JSON and make a file corrupt. Nothing is ever loaded with pickle: JSON, and safetensors for arrays
and weights.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import platformdirs

if TYPE_CHECKING:
    import torch

    from ltlib.config import Config
    from ltlib.parts import SavedModel

ARRAYS = "arrays.safetensors"
MODEL = "model.safetensors"
RUN_FILES = ("config.json", "meta.json", "metrics.jsonl", "eval.json", ARRAYS, MODEL)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# .tmp-<pid>.<host>.<hex>.<run id>: the writer's pid and host tell whether a temporary is still in use.
_TMP_DIR = re.compile(r"^\.tmp-(\d+)\.([a-z0-9-]+)\.[0-9a-f]+\.")
# write_json's ``.<name>.<hex>.tmp`` and the embedding cache's ``.<name>.<hex>.tmp.npy``.
_TMP_FILE = re.compile(r"^\..+\.tmp(\.npy)?$")
# A temporary that no live process of this host owns is abandoned once untouched this long: saving
# touches its files continuously and takes seconds, so this only spares writers on other hosts.
STALE_SECONDS = 15 * 60
# A live pid that owns a temporary this old is a reused pid, not the writer.
STALE_OWNED_SECONDS = 24 * 3600
# A run's JSON files are kilobytes to a few megabytes; a larger one is not ours and is not read.
MAX_JSON_BYTES = 256 << 20
# eval.json keys the CLI and the app read without a fallback.
EVAL_NUMBERS = ("accuracy", "balanced_accuracy", "many", "medium", "few", "ece", "classwise_ece", "nll", "mean_margin")
EVAL_PER_CLASS = ("class_counts", "per_class_accuracy", "per_class_margin")
# The arrays of a finished run that plots, calibration and embeddings index directly.
REQUIRED_ARRAYS = ("test_logits", "test_labels", "class_counts", "features", "feature_index")


class CorruptRun(ValueError):
    """A run's file is missing, unreadable or malformed; the message is ``<file>: <problem>``.

    ``path`` is the file (or the run folder itself), ``folder`` the run folder, ``problem`` the reason.
    """

    def __init__(self, path: Path, problem: str, folder: Path | None = None) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem
        self.folder = Path(folder) if folder is not None else self.path.parent


def runs_home(root: str | os.PathLike | None = None) -> Path:
    """The runs folder: ``root`` when given, else ``$LTLIB_HOME`` (when set and not empty), else ``runs`` in the
    user's data folder. Never the working directory, so the CLI, the app and the notebooks share one store."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("LTLIB_HOME") or Path(platformdirs.user_data_dir("ltlib")) / "runs")


def check_store(root: str | os.PathLike | None = None) -> Path:
    """The runs folder, if it is a folder or can be created there; else ``ValueError`` in one line.

    Creates nothing, so it can run before training (a bad ``--out`` must fail before the work, not after).
    """
    home = runs_home(root)
    existing = _existing_part(home)
    if not existing.is_dir():
        raise ValueError(f"runs folder {home} cannot be used: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"runs folder {home} cannot be used: {existing} is not writable")
    return home


def _existing_part(path: Path) -> Path:
    """The longest leading part of ``path`` that exists (``.`` at worst)."""
    return next((p for p in (path, *path.parents) if p.exists()), Path("."))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24] or "x"


def _host() -> str:
    return _slug(socket.gethostname())


def new_run_id(dataset: str, loss: str) -> str:
    """Time-ordered id built only from registry names, safe in a path."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(dataset)}-{_slug(loss)}-{uuid.uuid4().hex[:6]}"


# ----------------------------------------------------------------------------- writing


def _plain(o: Any) -> Any:
    """``o`` as JSON values: numpy scalars and arrays, tuples and sets become numbers and lists;
    non-finite floats become ``None`` (``null``), which strict JSON has in place of NaN and ±inf."""
    if isinstance(o, dict):
        return {(k.item() if isinstance(k, np.generic) else k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set, frozenset)):
        return [_plain(v) for v in o]
    if isinstance(o, np.ndarray):
        return _plain(o.tolist())
    if isinstance(o, np.generic):
        return _plain(o.item())
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if o is None or isinstance(o, (str, int)):
        return o
    raise TypeError(f"cannot store {type(o).__name__} in JSON")


def _dumps(obj: Any, indent: int | None = 1) -> bytes:
    return json.dumps(_plain(obj), indent=indent, allow_nan=False).encode()


def _write_synced(path: Path, data: bytes) -> None:
    """Write a new file and flush it to the disk before returning."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (a created or renamed file) durable; Windows cannot open folders."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    """Write strict JSON (non-finite floats as ``null``) atomically: a synced temporary file renamed over the target."""
    data = _dumps(obj)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
    """Write a complete run folder atomically and durably and return its path."""
    if not _ID.match(run_id):
        raise ValueError(f"run id {run_id!r} is not allowed; use letters, digits, '_', '.', '-'")
    home = check_store(root)
    home.mkdir(parents=True, exist_ok=True)
    target = home / run_id
    if target.exists():
        raise ValueError(f"run {run_id!r} already exists in {home}")
    tmp = home / f".tmp-{os.getpid()}.{_host()}.{uuid.uuid4().hex[:6]}.{run_id}"
    tmp.mkdir()
    try:
        _write_synced(tmp / "config.json", _dumps(config))
        _write_synced(tmp / "metrics.jsonl", b"".join(_dumps(h, indent=None) + b"\n" for h in history))
        if final is not None:
            _write_synced(tmp / "eval.json", _dumps(final))
        if arrays:
            from safetensors.numpy import save

            _write_synced(tmp / ARRAYS, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
        if state_dict is not None:
            from safetensors.torch import save as save_torch

            _write_synced(tmp / MODEL, save_torch({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}))
        # Last: a folder with meta.json has every other file on the disk already.
        _write_synced(tmp / "meta.json", _dumps(meta))
        _fsync_dir(tmp)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(home)
    return target


# ----------------------------------------------------------------------------- reading


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (non-finite numbers are stored as null)")


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(v), "a number")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _nan_for_null(o: Any) -> Any:
    """Undo the writer's NaN → null in a file of numbers."""
    if o is None:
        return math.nan
    if isinstance(o, dict):
        return {k: _nan_for_null(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_nan_for_null(v) for v in o]
    return o


def _regular_file(path: Path) -> None:
    if not path.exists():
        raise CorruptRun(path, "missing")
    if not path.is_file():
        raise CorruptRun(path, "is a folder, not a file" if path.is_dir() else "is not a regular file")


def _read_text(path: Path) -> str:
    _regular_file(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CorruptRun(path, f"is larger than {MAX_JSON_BYTES >> 20} MiB, too large to be a run's JSON")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptRun(path, f"is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise CorruptRun(path, f"cannot be read ({e.strerror or e})") from None


def _parse(path: Path, text: str, where: str = "") -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise CorruptRun(path, f"invalid JSON{where}: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except ValueError as e:  # a NaN / Infinity literal
        raise CorruptRun(path, f"invalid JSON{where}: {e}") from None
    except RecursionError:
        raise CorruptRun(path, f"invalid JSON{where}: nested too deeply") from None


def _read_object(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    if not text.strip():
        raise CorruptRun(path, "is empty")
    obj = _parse(path, text)
    if not isinstance(obj, dict):
        raise CorruptRun(path, f"expected a JSON object, found {_json_type(obj)}")
    return obj


def _read_history(path: Path) -> list[dict[str, Any]]:
    history = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            record = _parse(path, line, f" on line {n}")
            if not isinstance(record, dict):
                raise CorruptRun(path, f"line {n}: expected a JSON object, found {_json_type(record)}")
            history.append(_nan_for_null(record))
    return history


def _require(path: Path, obj: dict[str, Any], rules: dict[str, tuple[Any, str]]) -> None:
    """Each key present with a value that passes its check; the first failure names the key."""
    missing = [k for k in rules if k not in obj]
    if missing:
        raise CorruptRun(path, f"missing key(s) {', '.join(missing)}")
    for k, (ok, what) in rules.items():
        if not ok(obj[k]):
            raise CorruptRun(path, f"{k} is {_json_type(obj[k])}, expected {what}")


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    _require(path, meta, {"status": (lambda v: isinstance(v, str), "a string")})
    optional = {
        "created": (_is_number, "a number"),
        "error": (lambda v: v is None or isinstance(v, str), "a string or null"),
        "class_names": (lambda v: v is None or (isinstance(v, list) and all(isinstance(s, str) for s in v)), "a list of strings"),
    }
    _require(path, meta, {k: rule for k, rule in optional.items() if k in meta})


def _check_eval(path: Path, e: dict[str, Any], class_names: list[str] | None) -> int:
    """Check what readers index in eval.json; returns the number of classes."""
    number_list = (lambda v: isinstance(v, list) and all(_is_number(x) for x in v), "a list of numbers")
    _require(
        path,
        e,
        {
            **{k: (_is_number, "a number") for k in EVAL_NUMBERS},
            "group_rule": (lambda v: isinstance(v, str), "a string"),
            **{k: number_list for k in EVAL_PER_CLASS},
        },
    )
    lengths = {k: len(e[k]) for k in EVAL_PER_CLASS}
    n = lengths["class_counts"]
    if n == 0 or len(set(lengths.values())) > 1:
        raise CorruptRun(path, "per-class lists must have one entry per class: " + ", ".join(f"{k} has {v}" for k, v in lengths.items()))
    if class_names is not None and len(class_names) != n:
        raise CorruptRun(path, f"per-class lists have {n} entries but meta.json names {len(class_names)} classes")
    if not all(isinstance(c, int) and c >= 0 for c in e["class_counts"]):
        raise CorruptRun(path, "class_counts must be counts (whole numbers ≥ 0)")
    return n


def _check_config(path: Path, config: dict[str, Any]) -> None:
    _require(
        path,
        config,
        {
            "dataset": (lambda v: isinstance(v, str), "a string"),
            "loss": (lambda v: isinstance(v, str), "a string"),
            "imbalance": (_is_number, "a number"),
        },
    )


def _tensor_shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    """Shapes and dtypes from a safetensors header, which also proves the file is whole (no tensor data is read)."""
    from safetensors import SafetensorError, safe_open

    _regular_file(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptRun(path, f"is not a valid safetensors file ({e})") from None


def _check_arrays(path: Path, n_classes: int) -> None:
    shapes = _tensor_shapes(path)
    missing = [k for k in REQUIRED_ARRAYS if k not in shapes]
    if missing:
        raise CorruptRun(path, f"missing array(s) {', '.join(missing)}")
    (logits, lt), (labels, yt), (counts, ct), (feats, _), (index, it) = (shapes[k] for k in REQUIRED_ARRAYS)
    problems = [
        (len(logits) != 2 or logits[1] != n_classes, f"test_logits has shape {logits}, expected (N, {n_classes})"),
        (lt not in ("F16", "F32", "F64"), f"test_logits has dtype {lt}, expected floats"),
        (labels != logits[:1], f"test_labels has shape {labels}, expected ({logits[0]},)"),
        (counts != [n_classes], f"class_counts has shape {counts}, expected ({n_classes},)"),
        (len(feats) != 2, f"features has shape {feats}, expected (M, D)"),
        (index != feats[:1], f"feature_index has shape {index}, expected ({feats[0]},)"),
        (any(t[0] not in "IU" for t in (yt, ct, it)), "test_labels, class_counts and feature_index must be integers"),
    ]
    for bad, problem in problems:
        if bad:
            raise CorruptRun(path, problem)


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
        """Test logits/labels, features, classifier weights … as numpy arrays; ``CorruptRun`` if they do not load."""
        if self._arrays is None:
            f = self.path / ARRAYS
            if not f.exists() and self.status != "finished":
                return {}
            a = _load_tensors(f, "numpy")
            # The indices that plots and embeddings use must point inside the arrays.
            if "test_logits" in a and a["test_logits"].ndim == 2:
                n, c = a["test_logits"].shape
                for key, size in (("test_labels", c), ("feature_index", n)):
                    v = a.get(key)
                    if v is not None and v.size and not (v.min() >= 0 and v.max() < size):
                        raise CorruptRun(f, f"{key} has values outside 0 … {size - 1}")
            self._arrays = a
        return self._arrays

    def state_dict(self) -> dict[str, Any]:
        """The model's weights as torch tensors; ``CorruptRun`` if the file is missing or does not load."""
        return _load_tensors(self.path / MODEL, "torch")

    def checked_config(self) -> Config:
        """The run's config as a validated :class:`Config`, to rebuild its data or model from;
        ``CorruptRun`` (naming config.json) when it is not a valid config."""
        from ltlib.config import Config

        try:
            cfg = Config.from_dict(self.config)
            cfg.validate()
        except (ValueError, TypeError) as e:
            raise CorruptRun(self.path / "config.json", f"cannot rebuild this run: {e}") from None
        return cfg


def _load_tensors(path: Path, framework: str) -> dict[str, Any]:
    from safetensors import SafetensorError

    load_file: Callable[[str], dict[str, Any]]
    if framework == "numpy":
        from safetensors.numpy import load_file as load_numpy

        load_file = load_numpy
    else:
        from safetensors.torch import load_file as load_torch  # imports torch: only when asked for

        load_file = load_torch
    _regular_file(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:  # TypeError: a dtype numpy cannot hold
        raise CorruptRun(path, f"is not a valid safetensors file ({e})") from None


def _read_run(path: Path) -> Run:
    """Read and check every file of a run folder; ``CorruptRun`` names the first bad one."""
    try:
        config = _read_object(path / "config.json")
        _check_config(path / "config.json", config)
        meta = _read_object(path / "meta.json")
        _check_meta(path / "meta.json", meta)
        history = _read_history(path / "metrics.jsonl")
        finished = meta["status"] == "finished"
        final, n_classes = None, 0
        if finished or (path / "eval.json").exists():
            final = _nan_for_null(_read_object(path / "eval.json"))
            n_classes = _check_eval(path / "eval.json", final, meta.get("class_names"))
        if final is not None and (finished or (path / ARRAYS).exists()):
            _check_arrays(path / ARRAYS, n_classes)
        elif (path / ARRAYS).exists():
            _tensor_shapes(path / ARRAYS)
        if finished or (path / MODEL).exists():
            _tensor_shapes(path / MODEL)
    except OSError as e:  # the folder itself (permissions, vanished)
        raise CorruptRun(path, f"cannot be read ({e.strerror or e})", folder=path) from None
    return Run(path.name, path, config, meta, final, history)


def _looks_like_run(path: Path) -> bool:
    return any(os.path.lexists(path / name) for name in RUN_FILES)


def _run_folder(run_id: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    """The folder of a run given by id (in the runs folder) or by its path."""
    text = str(run_id)
    if _ID.match(text) and (runs_home(root) / text).exists():
        path = runs_home(root) / text
    elif Path(text).is_dir() and (not _ID.match(text) or _looks_like_run(Path(text))):
        path = Path(text)
    elif _ID.match(text):
        raise FileNotFoundError(f"no run {text!r} in {runs_home(root)}")
    else:
        raise ValueError(f"run id {text!r} is not a valid run id (nor a run folder)")
    if not path.is_dir() or not _looks_like_run(path):
        raise ValueError(f"{path} is not a run folder")
    return path


def load_run(run_id: str | os.PathLike, root: str | os.PathLike | None = None) -> Run:
    """Load a run by id (or by folder path): ``FileNotFoundError`` when there is none, ``ValueError`` for a
    folder that is not a run, :class:`CorruptRun` (a ``ValueError``) naming the file when one is missing or malformed."""
    return _read_run(_run_folder(run_id, root))


def load_model(
    run: Run | str | os.PathLike, root: str | os.PathLike | None = None, posthoc: bool = True, device: str | torch.device = "cpu"
) -> SavedModel:
    """The trained model of a finished run (a :class:`Run`, or an id or folder as for :func:`load_run`), in eval mode.

    It takes raw inputs as the dataset stores them (uint8 images (N, C, H, W) with values 0 … 255, or
    float feature vectors (N, D)), applies the run's input normalisation and returns float32 logits,
    by default with the run's post-hoc adjustments (τ-norm, logit adjustment) so that the logits
    are the run's ``test_logits``; ``posthoc=False`` gives the classifier's own logits.
    See :class:`ltlib.parts.SavedModel`. ``CorruptRun`` when the run's files do not rebuild it.
    """
    from ltlib.parts import build_saved_model

    run = run if isinstance(run, Run) else load_run(run, root)
    if run.status != "finished":
        raise ValueError(f"run {run.id} is {run.status}; only a finished run has a saved model")
    cfg = run.checked_config()
    shape, dtype, mean, std = _saved_inputs(run, cfg)
    model = build_saved_model(cfg, shape, dtype, run.arrays["class_counts"], mean, std, posthoc)
    try:
        model.classifier.load_state_dict(run.state_dict())
    except RuntimeError as e:  # missing, unexpected or misshapen weights
        raise CorruptRun(run.path / MODEL, f"does not fit the model that config.json builds ({' '.join(str(e).split())[:300]})") from None
    return model.to(device)


def _saved_inputs(run: Run, cfg: Config) -> tuple[tuple[int, ...], str, torch.Tensor, torch.Tensor]:
    """A run's input shape, dtype and normalisation (per channel or feature); for runs saved before these
    were stored, rebuilt from the run's data as training made it (deterministic in the seed)."""
    import torch

    shape, dtype = run.meta.get("input_shape"), run.meta.get("input_dtype")
    if "input_mean" not in run.arrays or "input_std" not in run.arrays:
        from ltlib.data import load_dataset, make_long_tailed
        from ltlib.inputs import Inputs

        data = make_long_tailed(load_dataset(cfg.dataset, **cfg.dataset_params), cfg.imbalance, cfg.profile, cfg.seed, cfg.val_fraction)
        inputs = Inputs(data, torch.device("cpu"))
        return data.input_shape, str(data.x_train.dtype).removeprefix("torch."), inputs.mean.flatten(), inputs.std.flatten()
    if not (
        isinstance(shape, list) and len(shape) in (1, 3) and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise CorruptRun(run.path / "meta.json", f"input_shape is {json.dumps(shape)[:60]}, expected a list of 1 or 3 positive sizes")
    if not isinstance(dtype, str):
        raise CorruptRun(run.path / "meta.json", f"input_dtype is {json.dumps(dtype)[:60]}, expected a dtype name such as uint8")
    mean, std = (torch.from_numpy(run.arrays[k]) for k in ("input_mean", "input_std"))
    if mean.shape != (shape[0],) or std.shape != (shape[0],):
        raise CorruptRun(
            run.path / ARRAYS, f"input_mean and input_std have shapes {list(mean.shape)} and {list(std.shape)}, expected [{shape[0]}]"
        )
    return tuple(shape), dtype, mean, std


@dataclass
class Scan:
    """What a runs folder holds: good runs (newest first), corrupt ones, and temporaries left by interrupted saves."""

    runs: list[Run]
    corrupt: list[CorruptRun]
    abandoned: list[Path]


def scan_runs(root: str | os.PathLike | None = None) -> Scan:
    """Read every run folder, keeping the good runs and reporting the corrupt ones (never raising for one run)."""
    home = runs_home(root)
    if not home.is_dir():
        if not _existing_part(home).is_dir():
            raise ValueError(f"runs folder {home} cannot be read: {_existing_part(home)} is a file, not a folder")
        return Scan([], [], [])
    runs, corrupt = [], []
    for p in sorted(_entries(home)):
        try:
            if p.name.startswith(".") or not p.is_dir() or not _looks_like_run(p):
                continue  # temporaries, and anything that is not a run
            runs.append(_read_run(p))
        except CorruptRun as e:
            corrupt.append(e)
        except OSError as e:
            corrupt.append(CorruptRun(p, f"cannot be read ({e.strerror or e})", folder=p))
    runs.sort(key=lambda r: r.meta.get("created", 0), reverse=True)
    return Scan(runs, corrupt, abandoned_temporaries(home))


def list_runs(root: str | os.PathLike | None = None) -> list[Run]:
    """Every good run under the runs folder, newest first; corrupt runs and temporaries are skipped
    (``scan_runs`` reports them)."""
    return scan_runs(root).runs


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise ValueError(f"{folder} cannot be read ({e.strerror or e})") from None


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process; the age decides instead
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, OSError):
        return False
    return True


def _age(path: Path, now: float) -> float:
    """Seconds since a temporary (or any file inside it) last changed; 0 when it is changing under us."""
    try:
        times = [path.lstat().st_mtime] + ([p.lstat().st_mtime for p in path.iterdir()] if path.is_dir() else [])
    except OSError:
        return 0.0
    return now - max(times)


def _abandoned(path: Path, now: float) -> bool:
    owner = _TMP_DIR.match(path.name)
    if owner and owner.group(2) == _host():
        return not _alive(int(owner.group(1))) or _age(path, now) > STALE_OWNED_SECONDS
    return _age(path, now) > STALE_SECONDS  # another host's writer, or an older name without an owner


def abandoned_temporaries(root: str | os.PathLike | None = None) -> list[Path]:
    """Temporaries of interrupted saves that nobody is writing any more: ``.tmp-*`` folders in the runs
    folder whose writer (pid and host in the name) is gone, or that are stale, and stale ``.*.tmp``
    files there or in run folders."""
    home, now = runs_home(root), time.time()
    if not home.is_dir():
        return []
    found = []
    for p in _entries(home):
        try:
            if p.is_symlink():
                continue
            if p.name.startswith(".tmp-") and p.is_dir():
                found += [p] if _abandoned(p, now) else []
            elif _TMP_FILE.match(p.name) and p.is_file():
                found += [p] if _age(p, now) > STALE_SECONDS else []
            elif p.is_dir() and not p.name.startswith("."):
                found += [
                    f
                    for f in p.iterdir()
                    if _TMP_FILE.match(f.name) and f.is_file() and not f.is_symlink() and _age(f, now) > STALE_SECONDS
                ]
        except OSError:
            continue  # vanished or unreadable: not ours to remove
    return sorted(found)


def clean_temporaries(root: str | os.PathLike | None = None) -> int:
    """Remove the abandoned temporaries (``abandoned_temporaries``); returns how many were removed."""
    removed = 0
    for p in abandoned_temporaries(root):
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        except FileNotFoundError:
            continue  # removed by someone else meanwhile
        except OSError as e:
            raise ValueError(f"cannot remove {p} ({e.strerror or e})") from None
        removed += 1
    return removed


def delete_run(run_id: str, root: str | os.PathLike | None = None) -> None:
    """Delete a run's folder, corrupt or not."""
    shutil.rmtree(_run_folder(run_id, root))
