import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltlib.data import FASHION_MNIST_DIR, class_groups, load_dataset, long_tail_counts, make_long_tailed, random_crop_flip
from tests.conftest import SHARED_CIFAR


def test_cifar10_lt_counts_match_ldam():
    counts = long_tail_counts(5000, 10, 100)
    assert counts[0] == 5000 and counts[-1] == 50
    assert sum(counts) == 12406


def test_cifar100_lt_and_step_profile():
    assert sum(long_tail_counts(500, 100, 100)) == 10847  # CIFAR-100-LT, as in the LDAM-DRW paper
    assert long_tail_counts(5000, 10, 10, "step") == [5000] * 5 + [500] * 5


def test_balanced_when_imbalance_is_one():
    assert long_tail_counts(100, 7, 1) == [100] * 7


@pytest.mark.parametrize("bad", [0.5, 0, -3, float("nan")])
def test_imbalance_below_one_is_rejected(bad):
    with pytest.raises(ValueError, match="imbalance"):
        long_tail_counts(100, 10, bad)


def test_unknown_profile_and_dataset():
    with pytest.raises(ValueError, match="exp, step"):
        long_tail_counts(100, 10, 10, "zipf")
    with pytest.raises(ValueError, match="unknown dataset 'nope'; choose one of: toy2d, digits"):
        load_dataset("nope")


def test_subsampling_is_seeded_and_test_stays_balanced():
    ds = load_dataset("digits")
    a, b = make_long_tailed(ds, 10, seed=3), make_long_tailed(ds, 10, seed=3)
    c = make_long_tailed(ds, 10, seed=4)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert list(a.class_counts()) == long_tail_counts(int(ds.class_counts().min()), 10, 10)
    assert len(set(np.bincount(a.y_test.numpy()))) == 1


def test_validation_split_is_stratified_and_disjoint():
    ds = make_long_tailed(load_dataset("digits"), 10, val_fraction=0.2)
    assert ds.y_val is not None and set(ds.y_val.tolist()) == set(range(10))
    assert len(ds.y_train) + len(ds.y_val) == sum(long_tail_counts(int(load_dataset("digits").class_counts().min()), 10, 10))


def test_zero_image_class_is_rejected():
    ds = load_dataset("digits")
    with pytest.raises(ValueError, match="zero training images"):
        make_long_tailed(ds, 1000)


def test_groups_by_count_and_by_tercile():
    groups, rule = class_groups([500, 300, 80, 50, 10, 5])
    assert rule == "count" and groups == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    groups, rule = class_groups(long_tail_counts(5000, 10, 100))
    assert rule == "tercile" and groups["many"] == [0, 1, 2, 3] and groups["few"] == [7, 8, 9]


def test_toy2d_and_digits_shapes():
    t = load_dataset("toy2d", num_classes=4)
    assert t.x_train.shape == (2000, 2) and t.x_train.dtype == torch.float32 and t.num_classes == 4
    d = load_dataset("digits")
    assert d.x_train.dtype == torch.uint8 and d.input_shape == (1, 8, 8) and len(d.y_test) == 500


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.y_train.numpy()).tolist() == [6000] * 10


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="../shared/data is not beside this checkout")
def test_cifar10_from_shared_archive():
    ds = load_dataset("cifar10", path=str(SHARED_CIFAR))
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert ds.class_names[:2] == ["airplane", "automobile"] and ds.crop_padding == 4
    lt = make_long_tailed(ds, 100)
    assert len(lt.y_train) == 12406


def _write_folder(root, images_per_class=3, size=12):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(images_per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_imagefolder_loads_and_caches(tmp_path):
    _write_folder(tmp_path / "imgs", images_per_class=5)
    ds = load_dataset("imagefolder", path=str(tmp_path / "imgs"))
    assert ds.class_names == ["cat", "dog"] and ds.input_shape == (3, 12, 12)
    assert len(ds.y_train) + len(ds.y_test) == 10


def test_imagefolder_tar_archive(tmp_path):
    _write_folder(tmp_path / "src" / "train")
    _write_folder(tmp_path / "src" / "test")
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src", arcname="data")
    ds = load_dataset("imagefolder", path=str(tmp_path / "a.tar.gz"))
    assert len(ds.y_train) == 6 and len(ds.y_test) == 6


def test_cifar10_is_found_by_name_in_the_data_folder_from_any_working_directory(tmp_path, monkeypatch):
    _write_folder(tmp_path / "src" / "train")
    _write_folder(tmp_path / "src" / "test")
    data_dir = Path(os.environ["LTLIB_DATA"])
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src", arcname="cifar10")
    monkeypatch.chdir(tmp_path / "src")
    ds = load_dataset("cifar10")
    assert ds.info["source"] == str(data_dir / "cifar10-jpeg.tar.gz") and ds.class_names == ["cat", "dog"]


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="../shared/data is not beside this checkout")
def test_cifar10_finds_the_checkouts_shared_archive_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_dataset("cifar10").info["source"] == str(SHARED_CIFAR)


def test_imagefolder_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("imagefolder", path=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load_dataset("imagefolder", path=str(tmp_path / "empty"))
    (tmp_path / "text" / "a").mkdir(parents=True)
    (tmp_path / "text" / "a" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no images found"):
        load_dataset("imagefolder", path=str(tmp_path / "text"))
    _write_folder(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "dog" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"corrupt image file .*broken\.png"):
        load_dataset("imagefolder", path=str(tmp_path / "corrupt"))
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("imagefolder")
    with pytest.raises(ValueError, match=r"dataset 'imagefolder': test_fraction=1 is out of range; allowed: a number in \(0, 1\)"):
        load_dataset("imagefolder", path=str(tmp_path / "corrupt"), test_fraction=1.0)


def test_datasets_declare_images_and_domains_as_they_load():
    from ltlib.data import DATASETS

    for name in ("toy2d", "digits", "digits-domains"):
        ds, traits = load_dataset(name), DATASETS.get(name).traits
        assert ("images" in traits) == ds.is_image and ("domains" in traits) == (ds.domains_train is not None)
    assert DATASETS.get("toy2d").traits == frozenset()
    assert DATASETS.get("fashion-mnist-domains").traits == {"images", "domains"}
    assert all("images" in DATASETS.get(n).traits for n in ("fashion-mnist", "cifar10", "imagefolder"))


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("toy2d", {"num_classes": 1}, r"dataset 'toy2d': num_classes=1 is out of range; allowed: an integer in \[2, 1000\]"),
        ("toy2d", {"spread": 0.0}, "spread=0 is out of range"),
        ("digits", {"n_test_per_class": 0}, "n_test_per_class=0 is out of range"),
        ("digits", {"n_test_per_class": 2.5}, "n_test_per_class=2.5 must be an integer"),
        ("digits", {"n_test_per_class": 500}, r"n_test_per_class=500 is out of range; allowed: \[1, \d+\]"),
        ("digits-domains", {"n_test_per_class": 0}, "n_test_per_class=0 is out of range"),
    ],
)
def test_dataset_parameters_are_checked(name, params, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(name, **params)


def test_random_crop_flip_matches_a_shifted_window():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, 1, False, g)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    windows = {tuple(padded[0, 0, i : i + 4, j : j + 4].flatten().tolist()) for i in range(3) for j in range(3)}
    assert out.shape == x.shape and tuple(out[0, 0].flatten().tolist()) in windows
    flipped = random_crop_flip(x, 0, True, torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


@pytest.mark.parametrize("broken", [None, "broken.jpg"])
def test_jpeg_folders_decode_like_pil_and_name_a_corrupt_file(tmp_path, broken):
    rng = np.random.default_rng(1)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.jpg", quality=90)
    if broken:
        (tmp_path / "dog" / broken).write_bytes(b"\xff\xd8 not really a jpeg")
        with pytest.raises(ValueError, match=r"corrupt image file .*broken\.jpg"):
            load_dataset("imagefolder", path=str(tmp_path))
        return
    ds = load_dataset("imagefolder", path=str(tmp_path), test_fraction=0.25)
    x = torch.cat([ds.x_train, ds.x_test])
    pil = {np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1).tobytes() for f in tmp_path.rglob("*.jpg")}
    assert {im.numpy().tobytes() for im in x} == pil


def test_fast_tar_reader_matches_tarfile(tmp_path):
    from ltlib.data import _plain_tar_members

    _write_folder(tmp_path / "imgs")
    long_dir = tmp_path / "imgs" / ("x" * 120)
    long_dir.mkdir()
    (long_dir / "0.png").write_bytes((tmp_path / "imgs" / "cat" / "0.png").read_bytes())
    # Python writes pax headers (long paths, fractional mtimes); GNU format uses long-name records.
    for name, fmt in (("pax.tar.gz", tarfile.PAX_FORMAT), ("ustar.tar", tarfile.USTAR_FORMAT), ("gnu.tar", tarfile.GNU_FORMAT)):
        with tarfile.open(tmp_path / name, "w:gz" if name.endswith("gz") else "w", format=fmt) as tar:
            for f in sorted((tmp_path / "imgs").rglob("*")):
                if fmt != tarfile.USTAR_FORMAT or long_dir not in (f, f.parent):
                    tar.add(f, arcname=f.relative_to(tmp_path).as_posix(), recursive=False)
        fast = _plain_tar_members(tmp_path / name)
        with tarfile.open(tmp_path / name) as tar:
            slow = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
        assert fast is None if fmt == tarfile.GNU_FORMAT else fast == slow


@pytest.mark.parametrize("broken", [False, True])
def test_decoding_in_worker_processes_matches_in_process(broken):
    from ltlib import imagedecode

    rng = np.random.default_rng(2)
    items = []
    for i in range(12):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="JPEG" if i % 2 else "PNG")
        items.append((f"img{i}", buf.getvalue()))
    if broken:
        items[7] = ("dog/broken.jpg", b"\xff\xd8 not really a jpeg")
        with pytest.raises(ValueError, match=r"corrupt image file 'dog/broken\.jpg'"):
            imagedecode.decode_all(items, workers=3, min_for_processes=0)
        return
    in_process = imagedecode.decode_all(items, workers=1)
    assert in_process.shape == (12, 8, 8, 3) and in_process.dtype == np.uint8
    assert np.array_equal(imagedecode.decode_all(items, workers=3, min_for_processes=0), in_process)
