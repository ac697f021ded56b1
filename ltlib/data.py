"""Datasets and long-tail subsampling.

Every dataset loader returns a :class:`Dataset`: a balanced train pool and a balanced test set
as tensors (uint8 images ``N×C×H×W`` or float features ``N×D``) plus class names. A loader's
entry declares the trait "images" when it gives images and "domains" when it gives domains, so a
run's methods can be checked against the dataset before any data is loaded. The long tail
is made afterwards by :func:`make_long_tailed`, with a seed, as in the LDAM-DRW
(Cao et al., NeurIPS 2019) and class-balanced loss (Cui et al., CVPR 2019) code.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import importlib.util
import lzma
import math
import os
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
import torch

from ltlib import imagedecode
from ltlib.registry import Interval, Registry

DATASETS = Registry("dataset")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_ARCHIVE = "cifar10-jpeg.tar.gz"
# In a source checkout (this package beside pyproject.toml) the project's own copies are found too: ../shared/data
# beside the repository and .device-data/ in it (the GPU machine's). Located from this file, never the working directory.
_REPO = Path(__file__).resolve().parents[1]
CHECKOUT_DATA_DIRS = (_REPO.parent / "shared" / "data", _REPO / ".device-data") if (_REPO / "pyproject.toml").is_file() else ()
# Limits on hostile input, module constants so that tests (and unusual data) can change them.
MAX_ARCHIVE_BYTES = 2 * 2**30  # decompressed bytes read from one image archive
MAX_IMAGE_FILE_BYTES = 256 * 2**20  # one image file, in a folder or an archive
MAX_IDX_BYTES = 2**28  # one decompressed IDX file (Fashion-MNIST's largest holds 47 MB)


@dataclass
class Dataset:
    """Tensors of one dataset. ``x_*`` are uint8 images (N, C, H, W) or float features (N, D)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    # Augmentation that suits the data: random-crop padding in pixels and horizontal flips.
    crop_padding: int = 0
    flip: bool = False
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    # Multi-domain datasets (TALLY): per-sample domain ids, the domain names and, per domain, its
    # classes from head to tail (so a tail class of one domain can be a head class of another).
    # All None for single-domain data.
    domains_train: torch.Tensor | None = None
    domains_test: torch.Tensor | None = None
    domains_val: torch.Tensor | None = None
    domain_names: list[str] | None = None
    domain_class_orders: list[list[int]] | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_image(self) -> bool:
        return self.x_train.dtype == torch.uint8

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_domains(self) -> int:
        return len(self.domain_names) if self.domain_names else 0

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.y_train.numpy(), minlength=self.num_classes)

    def domain_class_counts(self) -> np.ndarray:
        """Training images per (domain, class), shape (D, C); needs domains."""
        if self.domains_train is None:
            raise ValueError(f"dataset {self.name!r} has no domains")
        pair = self.domains_train.numpy() * self.num_classes + self.y_train.numpy()
        return np.bincount(pair, minlength=self.num_domains * self.num_classes).reshape(self.num_domains, self.num_classes)


def cache_dir() -> Path:
    """Where decoded arrays (and torchvision's downloads) are cached: ``$LTLIB_CACHE`` (when set and not empty),
    else the user's cache folder, ``platformdirs.user_cache_dir("ltlib")`` (``~/.cache/ltlib`` on Linux)."""
    return Path(os.environ.get("LTLIB_CACHE") or platformdirs.user_cache_dir("ltlib"))


def data_dir() -> Path:
    """Where datasets are looked up by name (``cifar10-jpeg.tar.gz``, ``fashion-mnist/``): ``$LTLIB_DATA`` (when set
    and not empty), else ``data`` in the user's data folder, ``platformdirs.user_data_dir("ltlib")``."""
    return Path(os.environ.get("LTLIB_DATA") or Path(platformdirs.user_data_dir("ltlib")) / "data")


@contextmanager
def _download_errors(name: str, remedy: str) -> Iterator[None]:
    """Turn a failed download (offline, refused, cut short) into one ``ValueError`` line ending with ``remedy``."""
    try:
        yield
    # URLError and timeouts are OSErrors; torchvision raises RuntimeError for a missing or corrupt download.
    except (OSError, RuntimeError, EOFError, tarfile.TarError, zlib.error) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"no local copy of {name} was found and torchvision could not download it ({reason}); {remedy}") from None


# ----------------------------------------------------------------------------- long tail


def long_tail_counts(n_max: int, num_classes: int, imbalance: float, profile: str = "exp") -> list[int]:
    """Per-class training counts of a long-tailed subset, head class first.

    ``exp``: n_c = int(n_max · imbalance^(−c/(C−1))); ``step``: the first ⌊C/2⌋ classes keep n_max,
    the rest int(n_max / imbalance). Imbalance 1 is balanced. CIFAR-10 with n_max=5000 and
    imbalance 100 gives 5000 … 50, 12,406 images in all.
    """
    if not imbalance >= 1:
        raise ValueError(f"imbalance={imbalance} is not allowed; it must be >= 1 (1 = balanced)")
    if num_classes < 1 or n_max < 1:
        raise ValueError(f"n_max={n_max} and num_classes={num_classes} must both be >= 1")
    factor = 1.0 / imbalance
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        return [int(n_max * factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    if profile == "step":
        head = num_classes // 2
        return [int(n_max)] * head + [int(n_max * factor)] * (num_classes - head)
    raise ValueError(f"unknown profile {profile!r}; choose one of: exp, step")


def make_long_tailed(
    ds: Dataset,
    imbalance: float,
    profile: str = "exp",
    seed: int = 0,
    val_fraction: float = 0.0,
) -> Dataset:
    """Subsample the balanced train pool into a long tail; the test set stays balanced.

    n_max is the smallest class in the pool, so every class can supply its count. With
    ``val_fraction`` > 0 a stratified validation split is carved from the long-tailed
    training set (at least one image per class with two or more). A multi-domain dataset gets
    a long tail in every domain, over that domain's own class order (``domain_class_orders``),
    with n_max the smallest (domain, class) cell of the domain.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} is out of range; allowed: [0, 1)")
    y = ds.y_train.numpy()
    domains_train = ds.domains_train
    dom = None if domains_train is None else domains_train.numpy()
    # Cells to subsample: (where, order, label) with ``order`` the classes from head to tail.
    cells = [(np.ones(len(y), bool), list(range(ds.num_classes)), "")]
    if dom is not None:
        names = ds.domain_names or [str(d) for d in range(int(dom.max()) + 1)]
        orders = ds.domain_class_orders or [list(range(ds.num_classes))] * len(names)
        cells = [(dom == d, orders[d], f" of domain {name!r}") for d, name in enumerate(names)]
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for where, order, label in cells:
        pool = np.bincount(y[where], minlength=ds.num_classes)
        if pool.min() == 0:
            empty = ds.class_names[int(pool.argmin())]
            raise ValueError(f"class {empty!r}{label} has no training images in dataset {ds.name!r}")
        counts = np.zeros(ds.num_classes, int)
        counts[order] = long_tail_counts(int(pool.min()), ds.num_classes, imbalance, profile)
        for c, n in enumerate(counts):
            if n < 1:
                raise ValueError(
                    f"imbalance={imbalance} leaves class {ds.class_names[c]!r}{label} with zero training images "
                    f"(largest class has {pool.min()}); use an imbalance <= {pool.min()}"
                )
        for c, n in enumerate(counts):
            chosen = rng.permutation(np.flatnonzero(where & (y == c)))[:n]
            n_val = int(round(n * val_fraction)) if val_fraction > 0 and n >= 2 else 0
            if val_fraction > 0 and n >= 2:
                n_val = min(max(n_val, 1), n - 1)
            val_idx.append(chosen[:n_val])
            train_idx.append(chosen[n_val:])
    tr = torch.from_numpy(np.concatenate(train_idx))
    va = torch.from_numpy(np.concatenate(val_idx))
    out = replace(
        ds,
        x_train=ds.x_train[tr],
        y_train=ds.y_train[tr],
        domains_train=None if domains_train is None else domains_train[tr],
        info={**ds.info, "imbalance": imbalance, "profile": profile, "subset_seed": seed},
    )
    if len(va):
        out.x_val, out.y_val = ds.x_train[va], ds.y_train[va]
        out.domains_val = None if domains_train is None else domains_train[va]
    return out


def class_groups(class_counts: np.ndarray | list[int]) -> tuple[dict[str, list[int]], str]:
    """Many/medium/few class groups and the rule used.

    By count (>100, 20–100, <20) when that leaves every group non-empty; otherwise (small
    datasets, CIFAR-10-LT) by terciles of the classes ordered from most to fewest images.
    """
    counts = np.asarray(class_counts)
    by_count = {
        "many": [int(c) for c in np.flatnonzero(counts > 100)],
        "medium": [int(c) for c in np.flatnonzero((counts >= 20) & (counts <= 100))],
        "few": [int(c) for c in np.flatnonzero(counts < 20)],
    }
    if all(by_count.values()):
        return by_count, "count"
    order = np.argsort(-counts, kind="stable")
    parts = np.array_split(order, 3)
    return {k: sorted(int(c) for c in p) for k, p in zip(("many", "medium", "few"), parts)}, "tercile"


# ----------------------------------------------------------------------------- loaders


def load_dataset(name: str, **params: Any) -> Dataset:
    """Build a registered dataset by name (``toy2d``, ``digits``, ``fashion-mnist``, ``cifar10``, …)."""
    return DATASETS.build(name, **params)


def _split_per_class(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n_test] for c in np.unique(y)])
    mask = np.ones(len(y), bool)
    mask[test] = False
    return np.flatnonzero(mask), np.sort(test)


@DATASETS.register(
    "toy2d",
    paper="Gaussian mixture in 2-D, for decision-region pictures",
    constraints={
        # Upper bounds keep a crafted config (a saved run's, a link's) from asking for terabytes.
        "num_classes": Interval(2, 1000),
        "n_per_class": Interval(1, 100_000),
        "n_test_per_class": Interval(1, 100_000),
        "spread": Interval(0, None, closed="neither"),
    },
)
def toy2d(num_classes: int = 5, n_per_class: int = 500, n_test_per_class: int = 200, spread: float = 0.6) -> Dataset:
    """2-D Gaussian mixture: class means on a circle, generated instantly (features, not images)."""
    rng = np.random.default_rng(12345)
    angles = 2 * np.pi * np.arange(num_classes) / num_classes
    means = np.stack([np.cos(angles), np.sin(angles)], 1) * 2.0

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(num_classes), n)
        return (means[y] + spread * rng.standard_normal((len(y), 2))).astype(np.float32), y

    xtr, ytr = sample(n_per_class)
    xte, yte = sample(n_test_per_class)
    return Dataset(
        "toy2d",
        torch.from_numpy(xtr),
        torch.from_numpy(ytr).long(),
        torch.from_numpy(xte),
        torch.from_numpy(yte).long(),
        [f"class {c}" for c in range(num_classes)],
    )


@DATASETS.register(
    "digits",
    paper="scikit-learn's 8×8 handwritten digits (UCI, Alpaydin & Kaynak 1998)",
    traits=("images",),
    constraints={"n_test_per_class": Interval(1, None)},
)
def digits(n_test_per_class: int = 50) -> Dataset:
    """scikit-learn's 8×8 digits (1,797 images, ships with scikit-learn): the embedded default."""
    # The CSV that sklearn.datasets.load_digits reads, read directly: importing scikit-learn (and
    # SciPy with it) costs ~2 s, more than the whole quick preset's training.
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ValueError("dataset 'digits' needs scikit-learn installed (it ships the images)")
    table = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",", dtype=np.float64)
    x = np.round(table[:, :-1].reshape(-1, 1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    y = table[:, -1].astype(np.int64)
    smallest = int(np.bincount(y).min())
    if n_test_per_class >= smallest:
        raise ValueError(
            f"n_test_per_class={n_test_per_class} is out of range; allowed: [1, {smallest - 1}] (the smallest digit class has {smallest} images)"
        )
    tr, te = _split_per_class(y, n_test_per_class, seed=0)
    return Dataset(
        "digits",
        torch.from_numpy(x[tr]),
        torch.from_numpy(y[tr]),
        torch.from_numpy(x[te]),
        torch.from_numpy(y[te]),
        [str(i) for i in range(10)],
        crop_padding=1,
    )


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _read_idx(path: Path) -> np.ndarray:
    """Read a (gzip'd) IDX file of unsigned bytes: magic ``00 00 08 ndim``, big-endian dims, then the data.

    Streamed: the size its header claims is checked against :data:`MAX_IDX_BYTES` before any data is
    read, so a small ``.gz`` cannot make this decompress gigabytes.
    """
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected an IDX file")
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:3] != b"\0\0\x08" or not 1 <= head[3] <= 4:
                raise ValueError(
                    f"{path} is not an IDX file of unsigned bytes (it starts {head!r}; expected 00 00 08 and 1 to 4 dimensions)"
                )
            raw = f.read(4 * head[3])
            dims = [int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw) - 3, 4)]
            if len(dims) != head[3]:
                raise ValueError(f"{path} is truncated: its header ends after {len(raw)} of {4 * head[3]} dimension bytes")
            size = math.prod(dims)
            if size > MAX_IDX_BYTES:
                raise ValueError(
                    f"{path} claims {'×'.join(map(str, dims))} = {size:,} bytes of data; at most {MAX_IDX_BYTES:,} (MAX_IDX_BYTES)"
                )
            data = f.read(size)
            if len(data) < size:
                raise ValueError(f"{path} is truncated: its header says {size:,} bytes of data, it holds {len(data):,}")
            if f.read(1):
                raise ValueError(f"{path} holds more data than its header says ({'×'.join(map(str, dims))} bytes)")
    except (OSError, EOFError, zlib.error) as e:
        raise _read_error(path, e) from None
    return np.frombuffer(data, np.uint8).reshape(dims).copy()


@DATASETS.register("fashion-mnist", paper="Xiao, Rasul & Vollgraf, Fashion-MNIST, arXiv 2017", traits=("images",))
def fashion_mnist(root: str | None = None, download: bool = True) -> Dataset:
    """Fashion-MNIST 28×28: ``$LTLIB_DATA/fashion-mnist`` or Debian's dataset-fashion-mnist package if present, else torchvision."""
    names = {k: f"{k}-ubyte.gz" for k in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
    if root:
        folder = Path(root)
        _existing(folder)
    else:
        found = (f for f in (data_dir() / "fashion-mnist", FASHION_MNIST_DIR) if all((f / n).exists() for n in names.values()))
        folder = next(found, FASHION_MNIST_DIR)
    if all((folder / f).exists() for f in names.values()):
        roots = data_roots() if root else None
        arr = {k: _read_idx(_confined(folder / f, roots)) for k, f in names.items()}
        xtr, ytr = arr["train-images-idx3"], arr["train-labels-idx1"]
        xte, yte = arr["t10k-images-idx3"], arr["t10k-labels-idx1"]
        for split, x, y in (("train", xtr, ytr), ("t10k", xte, yte)):
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or x.shape[1:] != xtr.shape[1:]:
                raise ValueError(
                    f"Fashion-MNIST {split} files in {folder} do not fit together: images {x.shape}, labels {y.shape} "
                    f"(expected N×H×W images of one size and N labels)"
                )
            if len(y) and int(y.max()) >= len(FASHION_CLASSES):
                raise ValueError(
                    f"{folder / names[f'{split}-labels-idx1']} has label {int(y.max())}; allowed: 0 to {len(FASHION_CLASSES) - 1}"
                )
    else:
        if root is not None:
            raise FileNotFoundError(f"no Fashion-MNIST IDX files (*-ubyte.gz) in {folder}")
        from torchvision.datasets import FashionMNIST

        target = cache_dir() / "torchvision"
        remedy = f"pass one with --dataset-param root=/folder/of/its/*-ubyte.gz/files, or put them in {data_dir() / 'fashion-mnist'} ($LTLIB_DATA)"
        with _download_errors("fashion-mnist", remedy):
            tr = FashionMNIST(str(target), train=True, download=download)
            te = FashionMNIST(str(target), train=False, download=download)
        xtr, ytr, xte, yte = tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy()
    return Dataset(
        "fashion-mnist",
        torch.from_numpy(np.ascontiguousarray(xtr)[:, None]),
        torch.from_numpy(ytr.astype(np.int64)),
        torch.from_numpy(np.ascontiguousarray(xte)[:, None]),
        torch.from_numpy(yte.astype(np.int64)),
        list(FASHION_CLASSES),
        crop_padding=2,
        flip=True,
    )


# Colour-tint domains: pixel value v ∈ [0, 1] of a grey image becomes offset + gain·v per RGB channel.
# Gains stay positive, so a domain is a per-channel affine "style" of the same digit (what TALLY's
# per-instance mean/std treats as domain nuisance).
DOMAIN_TINTS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "red": ((0.0, 0.0, 0.0), (1.0, 0.25, 0.25)),
    "green on grey": ((0.3, 0.3, 0.3), (0.1, 0.7, 0.1)),
    "blue on yellow": ((0.7, 0.6, 0.0), (0.3, 0.3, 0.9)),
}


def _tint(x: torch.Tensor, offset: tuple[float, ...], gain: tuple[float, ...]) -> torch.Tensor:
    """Grey uint8 images (N, 1, H, W) → RGB uint8 images (N, 3, H, W) of one tint domain."""
    a = torch.tensor(offset).reshape(1, 3, 1, 1)
    b = torch.tensor(gain).reshape(1, 3, 1, 1)
    return (255.0 * (a + b * x.float() / 255.0)).round().clamp(0, 255).to(torch.uint8)


def with_domains(base: Dataset, name: str, seed: int = 0) -> Dataset:
    """A multi-domain version of a grey dataset: each tint of :data:`DOMAIN_TINTS` is a domain.

    The train pool is split per class into disjoint, equal thirds, one per domain; every test image
    appears in every domain, so the test set is balanced over (domain, class). The class orders
    differ per domain (identity, reversed, shifted by half), so :func:`make_long_tailed` makes a
    class that is a tail class in one domain a head or middle class in another.
    """
    if not base.is_image or base.input_shape[0] != 1:
        raise ValueError(f"dataset {base.name!r} must be single-channel images to be tinted into domains")
    names = list(DOMAIN_TINTS)
    n_dom, n_cls = len(names), base.num_classes
    rng = np.random.default_rng(seed)
    y = base.y_train.numpy()
    dom = np.empty(len(y), np.int64)
    for c in range(n_cls):
        idx = rng.permutation(np.flatnonzero(y == c))
        dom[idx] = np.arange(len(idx)) % n_dom
    dom_t = torch.from_numpy(dom)
    x_train = torch.empty((len(y), 3, *base.input_shape[1:]), dtype=torch.uint8)
    for d, (offset, gain) in enumerate(DOMAIN_TINTS.values()):
        x_train[dom_t == d] = _tint(base.x_train[dom_t == d], offset, gain)
    x_test = torch.cat([_tint(base.x_test, *tint) for tint in DOMAIN_TINTS.values()])
    ranks = list(range(n_cls))
    return replace(
        base,
        name=name,
        x_train=x_train,
        x_test=x_test,
        y_test=base.y_test.repeat(n_dom),
        domains_train=dom_t,
        domains_test=torch.arange(n_dom).repeat_interleave(len(base.y_test)),
        domain_names=names,
        domain_class_orders=[ranks, ranks[::-1], ranks[n_cls // 2 :] + ranks[: n_cls // 2]],
    )


@DATASETS.register(
    "digits-domains",
    paper="Yang et al., Multi-Domain Long-Tailed Learning (TALLY), TMLR 2023 (setting)",
    traits=("images", "domains"),
    constraints={"n_test_per_class": Interval(1, None)},
)
def digits_domains(n_test_per_class: int = 50) -> Dataset:
    """Digits in 3 colour-tint domains, each with its own class order for the long tail (multi-domain LT)."""
    return with_domains(digits(n_test_per_class), "digits-domains")


@DATASETS.register(
    "fashion-mnist-domains",
    paper="Yang et al., Multi-Domain Long-Tailed Learning (TALLY), TMLR 2023 (setting)",
    traits=("images", "domains"),
)
def fashion_mnist_domains(root: str | None = None, download: bool = True) -> Dataset:
    """Fashion-MNIST in 3 colour-tint domains, each with its own class order for the long tail."""
    return with_domains(fashion_mnist(root, download), "fashion-mnist-domains")


def _decode_all(items: list[tuple[str, bytes]]) -> np.ndarray:
    """Image files → N×C×H×W uint8, decoded by Pillow in one process per core (``ltlib.imagedecode``)."""
    return imagedecode.decode_all(items).transpose(0, 3, 1, 2).copy()


def _is_image(name: str) -> bool:
    base = name.rpartition("/")[2]
    return base.lower().endswith(IMAGE_SUFFIXES) and not base.startswith(".")


def _hidden(name: str) -> bool:
    # Dot-folders (.git, .ipynb_checkpoints) and the resource forks macOS adds to archives hold no classes.
    return name.startswith(".") or name == "__MACOSX"


def data_roots() -> list[Path] | None:
    """Folders that user-given data paths must lie in: ``$LTLIB_DATA_ROOTS`` (os.pathsep-separated), or None (anywhere).

    Every file read from such a path is checked after resolving symlinks, so a link inside a root
    cannot read a file outside it.
    """
    env = os.environ.get("LTLIB_DATA_ROOTS")
    return [Path(p).expanduser().resolve() for p in env.split(os.pathsep) if p] if env else None


def _existing(path: Path) -> None:
    """FileNotFoundError naming a user-given path that does not exist; one ValueError line for one that cannot be looked up."""
    if "\0" in str(path):
        raise ValueError(f"path {str(path)!r} contains a NUL byte")
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"path does not exist: {path}") from None
    except OSError as e:  # a name too long, a symlink loop, no permission
        raise _read_error(path, e) from None


def _confined(path: Path, roots: list[Path] | None) -> Path:
    """``path`` with symlinks resolved; ValueError when that lies outside every root (when roots are given)."""
    real = path.resolve()
    if roots is not None and not any(real == r or r in real.parents for r in roots):
        via = "" if real == path.absolute() else f" (it resolves to {real})"
        allowed = ", ".join(str(r) for r in roots)
        raise ValueError(
            f"{path} is outside the allowed data roots{via}; allowed: {allowed} (set LTLIB_DATA_ROOTS to allow another folder)"
        )
    return real


def _read_error(path: Path, e: BaseException) -> ValueError:
    """One line for a failed read: the OS's reason (permissions, …) or, for bad data, 'truncated or corrupt'."""
    if isinstance(e, OSError) and e.errno is not None:
        return ValueError(f"cannot read {path}: {e.strerror}")
    return ValueError(f"{path} is truncated or corrupt: {' '.join(str(e).split()) or type(e).__name__}")


def _place(rel: str) -> tuple[str, str, str] | None:
    """(split, class, class folder) of an image file at relative path ``rel``; None when it is not one.

    The class is the file's folder; the split is the folder above it when named ``train``/``test``, else ``""``.
    """
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if len(parts) < 2 or not _is_image(parts[-1]) or any(_hidden(p) for p in parts[:-1]):
        return None
    split = parts[-3] if len(parts) >= 3 and parts[-3] in ("train", "test") else ""
    return split, parts[-2], "/".join(parts[:-1])


def _folder_files(root: Path, roots: list[Path] | None) -> tuple[list[tuple[str, Path, os.stat_result]], set[str]]:
    """Image files under ``root`` as (relative path, path to read, stat), sorted, and every sub-folder's relative path.

    Symlinks are followed (linked class folders are common), each checked against ``roots`` and for
    loops; hidden files and folders are skipped.
    """
    files: list[tuple[str, Path, os.stat_result]] = []
    folders: set[str] = set()
    # An explicit stack: a deep tree cannot hit the recursion limit.
    todo: list[tuple[Path, str, tuple[str, ...]]] = [(root, "", (str(root.resolve()),))]
    while todo:
        folder, rel, chain = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise _read_error(folder, e) from None
        for entry in entries:
            if _hidden(entry.name):
                continue
            path, child = Path(entry.path), rel + entry.name
            try:
                if entry.is_dir():
                    if _is_image(entry.name):
                        raise ValueError(f"{path} is a folder but is named like an image file; rename it")
                    real = str(_confined(path, roots))
                    if real in chain:
                        raise ValueError(f"{path} is a symlink loop: it leads back to {real}")
                    folders.add(child)
                    todo.append((path, child + "/", (*chain, real)))
                elif _is_image(entry.name):
                    if not entry.is_file():
                        what = "a broken symlink" if entry.is_symlink() and not path.exists() else "not a regular file"
                        raise ValueError(f"image file {path} is {what}")
                    # Confined, the resolved path is what is read: a link swapped afterwards changes nothing.
                    target = path if roots is None else _confined(path, roots)
                    st = target.stat()
                    if st.st_size > MAX_IMAGE_FILE_BYTES:
                        raise ValueError(
                            f"image file {path} is {st.st_size:,} bytes; at most {MAX_IMAGE_FILE_BYTES:,} (MAX_IMAGE_FILE_BYTES)"
                        )
                    files.append((child, target, st))
            except OSError as e:
                raise _read_error(path, e) from None
    return sorted(files, key=lambda f: f[0].split("/")), folders  # the order of sorted(rglob()), as before


def _read_file(path: Path) -> bytes:
    # Bounded even when the size changed since it was listed (a file still being written, /proc, …).
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_IMAGE_FILE_BYTES + 1)
    except OSError as e:
        raise _read_error(path, e) from None
    if len(blob) > MAX_IMAGE_FILE_BYTES:
        raise ValueError(f"image file {path} is over {MAX_IMAGE_FILE_BYTES:,} bytes (MAX_IMAGE_FILE_BYTES)")
    return blob


class _Budget:
    """A buffered read-only stream that refuses to yield more than :data:`MAX_ARCHIVE_BYTES`: decompression stays bounded."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            magic = f.read(6)
        opener = next((o for m, o in _COMPRESSIONS if magic.startswith(m)), open)
        self.path, self.limit, self.count = path, MAX_ARCHIVE_BYTES, 0
        self.buf, self.pos = b"", 0  # one large read and many slices beat a decompressor call per 512-byte header
        self.stream = opener(path, "rb")

    def read(self, n: int | None = -1) -> bytes:
        n = self.limit + 1 if n is None or n < 0 else n
        if self.pos + n <= len(self.buf):
            self.pos += n
            return self.buf[self.pos - n : self.pos]
        out = []
        while n > 0:
            if self.pos == len(self.buf):
                self.buf, self.pos = self.stream.read(2**20), 0
                self.count += len(self.buf)
                if self.count > self.limit:
                    raise ValueError(
                        f"{self.path} decompresses to more than {self.limit:,} bytes (MAX_ARCHIVE_BYTES); refusing to read further"
                    )
                if not self.buf:
                    break
            piece = self.buf[self.pos : self.pos + n]
            self.pos += len(piece)
            n -= len(piece)
            out.append(piece)
        return out[0] if len(out) == 1 else b"".join(out)

    def skip(self, n: int) -> None:
        while n > 0:
            chunk = self.read(min(n, 2**20))
            if not chunk:
                raise tarfile.ReadError("unexpected end of data")
            n -= len(chunk)

    def exact(self, n: int) -> bytes:
        data = self.read(n)
        if len(data) < n:
            raise tarfile.ReadError("unexpected end of data")
        return data

    def __enter__(self) -> _Budget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()


_COMPRESSIONS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# What reading a bad archive raises: tarfile's errors, a cut-short or garbled compressed stream, I/O errors.
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def _check_member(path: Path, name: str) -> None:
    """Refuse a member whose name points outside the archive: extracted, it would land elsewhere."""
    if name.startswith("/") or ".." in name.split("/"):
        raise ValueError(
            f"{path} has a member named {name!r}, which points outside the archive (absolute or with '..'); refusing the archive"
        )


def _image_member(path: Path, name: str, size: int) -> bool:
    """Whether to read a member (named like an image file; :func:`_place` decides later); refuses one too large."""
    if not _is_image(name):
        return False
    if size > MAX_IMAGE_FILE_BYTES:
        raise ValueError(f"member {name!r} of {path} is {size:,} bytes; at most {MAX_IMAGE_FILE_BYTES:,} per image (MAX_IMAGE_FILE_BYTES)")
    return True


class _Unusual(Exception):
    """An archive feature the fast reader leaves to ``tarfile``."""


def _pax_path(body: bytes) -> str | None:
    """The ``path`` of pax records ("LEN key=value\\n" each), or None when there is none."""
    pos, path = 0, None
    try:
        while pos < len(body):
            space = body.index(b" ", pos)
            length = int(body[pos:space])
            if length <= space - pos:
                raise ValueError(length)
            key, _, value = body[space + 1 : pos + length - 1].partition(b"=")
            if key == b"size" or key.startswith(b"GNU.sparse"):
                raise _Unusual(key)
            if key == b"path":
                path = value.decode()
            pos += length
    except UnicodeDecodeError:
        raise _Unusual("path is not UTF-8") from None
    except ValueError:
        raise tarfile.ReadError("malformed pax header") from None
    return path


def _checksum_ok(header: bytes) -> bool:
    """The header's checksum: the sum of its bytes with the checksum field as spaces (unsigned, or signed as some old tars wrote)."""
    try:
        stored = int(header[148:156].rstrip(b"\0 ").decode("ascii") or "-1", 8)
    except ValueError:
        return False
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    return stored == unsigned or stored == unsigned - 256 * sum(b >= 128 for b in header[:148] + header[156:])


def _plain_tar_members(path: Path, dirs: set[str] | None = None) -> list[tuple[str, bytes]] | None:
    """Image files of a plain ustar archive (optionally compressed), streamed, with folder members' names added to ``dirs``.

    ``tarfile`` spends ~50 µs of Python per member; parsing the 512-byte headers directly reads the
    60,000-image CIFAR archive several times faster. Pax headers (Python's default) are read for a
    long ``path``; anything else unusual (GNU long names, links, base-256 sizes, names that are not
    UTF-8) returns None and the caller uses ``tarfile``.
    """
    out: list[tuple[str, bytes]] = []
    found: set[str] = set()
    long_name: str | None = None
    offset = 0
    with _Budget(path) as stream:
        while True:
            header = stream.read(512)
            if header == bytes(512):
                if dirs is not None:
                    dirs |= found
                return out
            if not header:  # tar writers end with zero blocks: without them the archive was cut at a member's end
                raise tarfile.ReadError(f"no end-of-archive marker after byte {offset:,}" if offset else "the file is empty")
            if len(header) < 512 or not _checksum_ok(header):
                where = f"bad header at byte {offset:,}" if offset else "not a tar archive (no valid header at byte 0)"
                raise tarfile.ReadError("unexpected end of data" if len(header) < 512 else where)
            if header[257:262] != b"ustar" or header[124] & 0x80:
                return None
            kind = header[156:157]
            try:
                size = int(header[124:136].rstrip(b"\0 ").decode("ascii") or "0", 8)
            except ValueError:
                raise tarfile.ReadError(f"bad size field at byte {offset:,}") from None
            padded = (size + 511) // 512 * 512
            offset += 512 + padded
            try:
                if kind == b"x":
                    if size > 2**20:
                        raise tarfile.ReadError(f"pax header of {size:,} bytes at byte {offset - 512 - padded:,}")
                    long_name = _pax_path(stream.exact(padded)[:size])
                    continue
                name = header[0:100].rstrip(b"\0").decode()
                prefix = header[345:500].rstrip(b"\0").decode()
            except (UnicodeDecodeError, _Unusual):
                return None
            name, long_name = long_name or (f"{prefix}/{name}" if prefix else name), None
            if kind not in (b"0", b"\0", b"5", b"g"):  # links, GNU long names, devices …: tarfile reads (or refuses) them
                return None
            if kind != b"g":  # g: a global pax header
                _check_member(path, name)
                found.add(name.rstrip("/") if kind == b"5" else name.rpartition("/")[0])
            if kind in (b"0", b"\0") and _image_member(path, name, size):
                out.append((name, stream.exact(padded)[:size]))
            else:
                stream.skip(padded)


def _tarfile_members(path: Path, dirs: set[str]) -> list[tuple[str, bytes]]:
    """Image files of any tar archive, streamed by ``tarfile``; refuses links, devices and names outside the archive."""
    out = []
    # typeshed's tarfile wants a file object with write, seek and tell, which stream mode ("r|") never calls.
    with _Budget(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
        for m in tar:
            _check_member(path, m.name)
            if m.issym() or m.islnk():
                kind = "symlink" if m.issym() else "hard link"
                raise ValueError(f"{path} has a {kind} member {m.name!r} → {m.linkname!r}; links are not allowed in an image archive")
            dirs.add(m.name if m.isdir() else m.name.rpartition("/")[0])
            if m.isdir():
                continue
            if not m.isfile():
                raise ValueError(f"{path} has a member {m.name!r} that is a device or fifo; only files and folders are allowed")
            elif _image_member(path, m.name, m.size):
                out.append((m.name, tar.extractfile(m).read()))
        end = tar.offset
    # tarfile takes a cut-short or garbled header after the first for the end of the archive: look for the real end marker.
    with _Budget(path) as stream:
        stream.skip(end)
        if stream.read(512) != bytes(512):
            raise tarfile.ReadError(f"no end-of-archive marker after byte {end:,}")
    return out


def _is_archive(path: Path) -> bool:
    """By name or by content (compression magic, a ustar header); only a regular file (not a fifo or device) is opened."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(512)
    return path.name.lower().endswith(_ARCHIVE_SUFFIXES) or any(head.startswith(m) for m, _ in _COMPRESSIONS) or head[257:262] == b"ustar"


def _norm(rel: str) -> str:
    return "/".join(p for p in rel.split("/") if p not in ("", "."))


_Tree = dict[str, dict[str, list[tuple[str, bytes]]]]


def _read_tree(path: Path, files: list[tuple[str, Path, os.stat_result]] | None, folders: set[str]) -> _Tree:
    """Image files of an ImageFolder tree as split → class → [(name, bytes)], checked for classes that would vanish.

    ``files`` come from :func:`_folder_files` for a folder, or are None for an archive (then read here
    and its folders added to ``folders``). The split is a top folder named ``train``/``test`` when
    present, else ``""``.
    """
    if files is not None:
        members = [(rel, str(path / rel), lambda f=f: _read_file(f)) for rel, f, _ in files]
    else:
        try:
            found = _plain_tar_members(path, folders)
            if found is None:
                found = _tarfile_members(path, folders)
        except _ARCHIVE_ERRORS as e:
            raise _read_error(path, e) from None
        members = [(name, f"{path}:{name}", lambda blob=blob: blob) for name, blob in found]
    tree: _Tree = {}
    class_dirs: set[str] = set()
    for rel, label, read in members:
        placed = _place(rel)
        if placed is None:
            continue
        split, cls, folder = placed
        if any(ord(ch) < 32 or ord(ch) == 127 or 0xDC80 <= ord(ch) <= 0xDCFF for ch in cls):
            raise ValueError(
                f"class folder {folder!r} in {path} has a control character or bytes that are not UTF-8 in its name; rename it"
            )
        tree.setdefault(split, {}).setdefault(cls, []).append((label, read()))
        class_dirs.add(folder)
    if not tree:
        raise ValueError(f"no images found in {path} (expected class sub-folders of {', '.join(IMAGE_SUFFIXES)} files)")
    # A folder beside a class folder with no image below it is a class that would silently vanish.
    holding = {"/".join(d.split("/")[:i]) for d in class_dirs for i in range(1, d.count("/") + 2)}
    parents = {d.rpartition("/")[0] for d in class_dirs}
    beside = {_norm(d) for d in folders} - holding
    empty = sorted(d for d in beside if d and d.rpartition("/")[0] in parents and not any(map(_hidden, d.split("/"))))
    if empty:
        raise ValueError(
            f"class folder {empty[0]!r} in {path} has no images (expected {', '.join(IMAGE_SUFFIXES)} files); add images or remove it"
        )
    return tree


def _cache_key(path: Path, files: list[tuple[str, Path, os.stat_result]] | None, folders: set[str]) -> str:
    """A hash of what the decoded arrays depend on: every image file's relative path, size and mtime, or the archive's own.

    The folders count too: a new empty class folder must be reported, not hidden by the cache.
    """
    h = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape"))
    stats = [("", path.stat())] if files is None else [(rel, st) for rel, _, st in files]
    for rel, st in stats:
        h.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    h.update("\0".join(["", *sorted(folders)]).encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def _cache_error(where: Path, e: OSError) -> ValueError:
    return ValueError(f"cannot use the dataset cache {where}: {e.strerror or e}; set LTLIB_CACHE to a writable folder")


def _valid_cache(arrays: dict[str, np.ndarray]) -> bool:
    """Whether a cache file holds what :func:`_decode_tree` writes (a file of the right name can still be foreign)."""
    classes = arrays.get("classes")
    splits = {k[2:] for k in arrays if k[:2] in ("x_", "y_")}
    if classes is None or classes.ndim != 1 or classes.dtype.kind != "U" or len(classes) < 2:
        return False
    if splits not in ({"all"}, {"train"}, {"train", "test"}) or set(arrays) != {"classes"} | {f"{p}_{s}" for s in splits for p in "xy"}:
        return False
    for s in splits:
        x, y = arrays[f"x_{s}"], arrays[f"y_{s}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3 or y.dtype != np.int64 or y.shape != (len(x),):
            return False
        if len(y) == 0 or y.min() < 0 or y.max() >= len(classes):
            return False
    return True


def _load_cache(cached: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent, cut short by a kill, corrupt or foreign (then the file is removed)."""
    try:
        z = np.load(cached, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz file")
        with z:
            arrays = {k: z[k] for k in z.files}
        if _valid_cache(arrays):
            return arrays
    except FileNotFoundError:
        return None
    except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, KeyError, NotImplementedError):
        pass
    try:
        cached.unlink(missing_ok=True)
    except OSError as e:
        raise _cache_error(cached, e) from None
    return None


def _save_cache(cached: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a unique temporary file beside the target, synced, then renamed over it."""
    try:
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=f".{cached.name}.", suffix=".tmp")
    except OSError as e:
        raise _cache_error(cached.parent, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # mypy matches **arrays with savez's allow_pickle: bool too
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, cached)
    except OSError as e:
        raise _cache_error(cached, e) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def _cache_lock(cached: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``cached`` so that concurrent processes decode a new folder once.

    The holder removes the lock file before releasing it; a process that then wakes on the removed
    file sees that it is no longer the one at that path and locks afresh.
    """
    lock = cached.with_name(cached.name + ".lock")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                import fcntl  # POSIX only; elsewhere the atomic rename alone keeps the cache whole

                fcntl.flock(fd, fcntl.LOCK_EX)
            except (ImportError, OSError):  # no locks here (Windows, some network file systems)
                break
            try:
                if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
    except OSError as e:
        raise _cache_error(cached.parent, e) from None
    try:
        yield
    finally:
        with suppress(OSError):  # a lock file left behind is harmless
            lock.unlink(missing_ok=True)
        os.close(fd)


def _decode_tree(path: Path, tree: _Tree) -> dict[str, np.ndarray]:
    """Check the splits and classes of a tree, then decode it into the arrays that are cached."""
    splits = set(tree)
    if "" in splits and len(splits) > 1:
        raise ValueError(
            f"{path} mixes train/ or test/ folders with class folders outside them; put every class folder under train/ and test/, or none"
        )
    if splits == {"test"}:
        raise ValueError(f"{path} has a test/ folder but no train/ folder beside it")
    classes = sorted({c for split in tree.values() for c in split})
    if len(classes) < 2:
        raise ValueError(f"{path} has one class folder ({classes[0]!r}); at least 2 classes are needed")
    for split in ("train", "test") if splits == {"train", "test"} else ():
        missing = [c for c in classes if c not in tree[split]]
        if missing:
            raise ValueError(f"class {missing[0]!r} has no images in the {split}/ folder of {path}")
    arrays = {"classes": np.array(classes)}
    for split, by_class in tree.items():
        items = [(f, c) for c in classes for f in by_class.get(c, [])]
        arrays[f"x_{split or 'all'}"] = _decode_all([f for f, _ in items])
        arrays[f"y_{split or 'all'}"] = np.array([classes.index(c) for _, c in items], np.int64)
    return arrays


def _folder_dataset(name: str, path: Path, test_fraction: float, seed: int, roots: list[Path] | None = None) -> Dataset:
    """An image folder or archive as a Dataset, decoded once and cached under :func:`cache_dir`.

    ``roots``: folders every file read must lie in, after resolving symlinks (None: anywhere).
    """
    _existing(path)
    _confined(path, roots)
    files: list[tuple[str, Path, os.stat_result]] | None = None
    folders: set[str] = set()
    if path.is_dir():
        files, folders = _folder_files(path, roots)
    else:
        try:
            archive = _is_archive(path)
        except OSError as e:
            raise _read_error(path, e) from None
        if not archive:
            raise ValueError(f"{path} is neither a folder nor a .tar/.tar.gz archive")
    cached = cache_dir() / f"{name}-{_cache_key(path, files, folders)}.npz"
    arrays = _load_cache(cached)
    if arrays is None:
        with _cache_lock(cached):
            arrays = _load_cache(cached)  # another process may have decoded it while this one waited
            if arrays is None:
                arrays = _decode_tree(path, _read_tree(path, files, folders))
                _save_cache(cached, arrays)
    classes = [str(c) for c in arrays["classes"]]
    if "x_train" in arrays and "x_test" in arrays:
        xtr, ytr, xte, yte = arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
    else:
        split = "all" if "x_all" in arrays else "train"  # _valid_cache: one of the two
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        per_class = np.bincount(y, minlength=len(classes))
        if per_class.min() < 2:
            raise ValueError(f"every class needs at least 2 images to split off a test set; {path} has a class with {per_class.min()}")
        tr, te = _split_per_class(y, max(1, int(per_class.min() * test_fraction)), seed)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    size = xtr.shape[-1]
    return Dataset(
        name,
        torch.from_numpy(xtr),
        torch.from_numpy(ytr),
        torch.from_numpy(xte),
        torch.from_numpy(yte),
        classes,
        crop_padding=max(1, size // 8),
        flip=True,
        info={"source": str(path)},
    )


@DATASETS.register("cifar10", paper="Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009", traits=("images",))
def cifar10(path: str | None = None, download: bool = True) -> Dataset:
    """CIFAR-10 32×32: an ImageFolder folder/archive (train/<class>/*.jpg, test/…) or torchvision's download.

    Without ``path``, ``cifar10-jpeg.tar.gz`` is looked up in :func:`data_dir`, then in a checkout's :data:`CHECKOUT_DATA_DIRS`.
    """
    candidates = [Path(path)] if path else [d / CIFAR10_ARCHIVE for d in (data_dir(), *CHECKOUT_DATA_DIRS)]
    for p in candidates:
        if p.exists() or path:
            ds = _folder_dataset("cifar10", p, test_fraction=0.2, seed=0, roots=data_roots() if path else None)
            ds.crop_padding = 4
            return ds
    from torchvision.datasets import CIFAR10

    target = cache_dir() / "torchvision"
    remedy = (
        f"pass one with --dataset-param path=/path/to/{CIFAR10_ARCHIVE} (an ImageFolder folder or .tar.gz of train/ and test/ "
        f"class folders), or put {CIFAR10_ARCHIVE} in {data_dir()} ($LTLIB_DATA)"
    )
    with _download_errors("cifar10", remedy):
        tr = CIFAR10(str(target), train=True, download=download)
        te = CIFAR10(str(target), train=False, download=download)
    return Dataset(
        "cifar10",
        torch.from_numpy(tr.data.transpose(0, 3, 1, 2).copy()),
        torch.tensor(tr.targets),
        torch.from_numpy(te.data.transpose(0, 3, 1, 2).copy()),
        torch.tensor(te.targets),
        list(tr.classes),
        crop_padding=4,
        flip=True,
    )


@DATASETS.register(
    "imagefolder",
    paper="your own images: one sub-folder per class",
    traits=("images",),
    constraints={"test_fraction": Interval(0, 1, closed="neither")},
)
def imagefolder(path: str = "", test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Your own folder (or .tar.gz) of class sub-folders; a balanced test split is carved per class."""
    if not path:
        raise ValueError("dataset 'imagefolder' needs a path: --dataset-param path=/folder/of/class/subfolders")
    return _folder_dataset("imagefolder", Path(path), test_fraction, seed, roots=data_roots())


# ----------------------------------------------------------------------------- on-device augmentation


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero-padding by ``padding`` pixels, and random horizontal flips, batched.

    Works on any device with tensor ops only (no per-image Python), like torchvision's
    ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()`` applied image by image.
    """
    n, _, h, w = x.shape
    dev = x.device
    if padding > 0:
        xp = torch.nn.functional.pad(x, (padding,) * 4)
        oy = torch.randint(0, 2 * padding + 1, (n, 1), device=dev, generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (n, 1), device=dev, generator=generator)
        rows = (oy + torch.arange(h, device=dev))[:, :, None]
        cols = (ox + torch.arange(w, device=dev))[:, None, :]
        x = xp.permute(0, 2, 3, 1)[torch.arange(n, device=dev)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(n, device=dev, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x
