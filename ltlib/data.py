"""Datasets and long-tail subsampling.

Every dataset loader returns a :class:`Dataset`: a balanced train pool and a balanced test set
as tensors (uint8 images ``N×C×H×W`` or float features ``N×D``) plus class names. A loader's
entry declares the trait "images" when it gives images and "domains" when it gives domains, so a
run's methods can be checked against the dataset before any data is loaded. The long tail
is made afterwards by :func:`make_long_tailed`, with a seed, as in the LDAM-DRW
(Cao et al., NeurIPS 2019) and class-balanced loss (Cui et al., CVPR 2019) code.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ltlib import imagedecode
from ltlib.registry import Interval, Registry

DATASETS = Registry("dataset")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


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
    """Where decoded arrays are cached: ``$LTLIB_CACHE`` or ``~/.cache/ltlib``."""
    return Path(os.environ.get("LTLIB_CACHE", Path.home() / ".cache" / "ltlib"))


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
    dom = None if ds.domains_train is None else ds.domains_train.numpy()
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
        domains_train=None if dom is None else ds.domains_train[tr],
        info={**ds.info, "imbalance": imbalance, "profile": profile, "subset_seed": seed},
    )
    if len(va):
        out.x_val, out.y_val = ds.x_train[va], ds.y_train[va]
        out.domains_val = None if dom is None else ds.domains_train[va]
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


def load_dataset(name: str, **params) -> Dataset:
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
        "num_classes": Interval(2, None),
        "n_per_class": Interval(1, None),
        "n_test_per_class": Interval(1, None),
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
    """Read a (gzip'd) IDX file as numpy: magic, dims, then big-endian uint8 data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


@DATASETS.register("fashion-mnist", paper="Xiao, Rasul & Vollgraf, Fashion-MNIST, arXiv 2017", traits=("images",))
def fashion_mnist(root: str | None = None, download: bool = True) -> Dataset:
    """Fashion-MNIST 28×28: Debian's dataset-fashion-mnist package if present, else torchvision."""
    folder = Path(root) if root else FASHION_MNIST_DIR
    names = {k: f"{k}-ubyte.gz" for k in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
    if all((folder / f).exists() for f in names.values()):
        arr = {k: _read_idx(folder / f) for k, f in names.items()}
        xtr, ytr = arr["train-images-idx3"], arr["train-labels-idx1"]
        xte, yte = arr["t10k-images-idx3"], arr["t10k-labels-idx1"]
    else:
        if root is not None:
            raise FileNotFoundError(f"no Fashion-MNIST IDX files (*-ubyte.gz) in {folder}")
        from torchvision.datasets import FashionMNIST

        target = cache_dir() / "torchvision"
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
    base = os.path.basename(name)
    return base.lower().endswith(IMAGE_SUFFIXES) and not base.startswith(".")


def _plain_tar_members(path: Path, max_bytes: int = 2**30) -> list[tuple[str, bytes]] | None:
    """Regular files of a plain ustar archive (optionally gzip'd, up to ``max_bytes``), read in memory.

    ``tarfile`` spends ~50 µs of Python per member; slicing the 512-byte headers directly reads the
    60,000-image CIFAR archive several times faster. Pax headers (Python's default) are read for a
    long ``path``; anything else unusual (GNU long names, links, sparse files) returns None and the
    caller uses ``tarfile``.
    """
    if path.stat().st_size > max_bytes:
        return None
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    out, pos, long_name = [], 0, None
    while pos + 512 <= len(raw):
        header = raw[pos : pos + 512]
        if header == bytes(512):
            return out
        if header[257:262] != b"ustar":
            return None
        kind = header[156:157]
        size = int(header[124:136].rstrip(b"\0 ").decode() or "0", 8)
        body = raw[pos + 512 : pos + 512 + size]
        pos += 512 + (size + 511) // 512 * 512
        if kind == b"x":  # pax records "LEN key=value\n": only a path matters here
            paths = [r.split(b"=", 1)[1] for r in body.split(b"\n") if b" path=" in r[:24]]
            long_name = paths[0].decode() if paths else None
            continue
        if kind == b"g" or kind == b"5":  # global pax header, directory
            continue
        if kind not in (b"0", b"\0"):  # links, GNU long names, devices …
            return None
        name = header[0:100].rstrip(b"\0").decode()
        prefix = header[345:500].rstrip(b"\0").decode()
        out.append((long_name or (f"{prefix}/{name}" if prefix else name), body))
        long_name = None
    return out


def _read_tree(path: Path) -> dict[str, dict[str, list[tuple[str, bytes]]]]:
    """Files of an ImageFolder tree (a folder or a .tar/.tar.gz archive) as split → class → files.

    The split is a top folder named ``train``/``test`` when present, else ``""``.
    """
    tree: dict[str, dict[str, list[tuple[str, bytes]]]] = {}

    def add(rel: str, read) -> None:
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if len(parts) < 2 or not _is_image(parts[-1]):
            return
        split = parts[-3] if len(parts) >= 3 and parts[-3] in ("train", "test") else ""
        tree.setdefault(split, {}).setdefault(parts[-2], []).append((rel, read()))

    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                add(f.relative_to(path).as_posix(), f.read_bytes)
    elif tarfile.is_tarfile(path):
        members = _plain_tar_members(path)
        if members is not None:
            for name, blob in members:
                add(name, lambda blob=blob: blob)
        else:
            with tarfile.open(path) as tar:
                for m in tar:
                    if m.isfile():
                        add(m.name, lambda m=m: tar.extractfile(m).read())
    else:
        raise ValueError(f"{path} is neither a folder nor a .tar/.tar.gz archive")
    return tree


def _cache_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]


def _folder_dataset(name: str, path: Path, test_fraction: float, seed: int) -> Dataset:
    if not path.exists():
        raise FileNotFoundError(f"path does not exist: {path}")
    cached = cache_dir() / f"{name}-{_cache_key(path)}.npz"
    if cached.exists():
        with np.load(cached, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        tree = _read_tree(path)
        if not tree:
            raise ValueError(f"no images found in {path} (expected class sub-folders of {', '.join(IMAGE_SUFFIXES)} files)")
        classes = sorted({c for split in tree.values() for c in split})
        arrays = {"classes": np.array(classes)}
        for split, by_class in tree.items():
            items = [(f, c) for c in classes for f in by_class.get(c, [])]
            arrays[f"x_{split or 'all'}"] = _decode_all([f for f, _ in items])
            arrays[f"y_{split or 'all'}"] = np.array([classes.index(c) for _, c in items], np.int64)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, cached)
    classes = [str(c) for c in arrays["classes"]]
    if "x_train" in arrays and "x_test" in arrays:
        xtr, ytr, xte, yte = arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
    else:
        x = arrays.get("x_all", arrays.get("x_train"))
        y = arrays.get("y_all", arrays.get("y_train"))
        per_class = np.bincount(y, minlength=len(classes))
        n_test = max(1, int(per_class.min() * test_fraction))
        if per_class.min() < 2:
            raise ValueError(f"every class needs at least 2 images to split off a test set; {path} has a class with {per_class.min()}")
        tr, te = _split_per_class(y, n_test, seed)
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


CIFAR10_ARCHIVES = ("../shared/data/cifar10-jpeg.tar.gz", ".device-data/cifar10-jpeg.tar.gz")


@DATASETS.register("cifar10", paper="Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009", traits=("images",))
def cifar10(path: str | None = None, download: bool = True) -> Dataset:
    """CIFAR-10 32×32: an ImageFolder folder/archive (train/<class>/*.jpg, test/…) or torchvision's download."""
    candidates = [Path(path)] if path else [Path(p) for p in CIFAR10_ARCHIVES]
    for p in candidates:
        if p.exists() or path:
            ds = _folder_dataset("cifar10", p, test_fraction=0.2, seed=0)
            ds.crop_padding = 4
            return ds
    from torchvision.datasets import CIFAR10

    target = cache_dir() / "torchvision"
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
    return _folder_dataset("imagefolder", Path(path), test_fraction, seed)


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
