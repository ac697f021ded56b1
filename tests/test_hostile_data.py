"""Hostile input for the data readers and the decoded-data cache (docs/reliability.md).

Every folder and archive is built here, inside the test's temporary folder, and ``$LTLIB_CACHE``
points there too. A bad input must end in one ``ValueError`` (or ``FileNotFoundError``) line that
names the bad path or value; no other exception type may escape.
"""

import bz2
import gzip
import io
import lzma
import multiprocessing
import os
import pickle
import signal
import struct
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltlib import data, imagedecode
from ltlib.data import FASHION_MNIST_DIR, load_dataset


@pytest.fixture(autouse=True)
def cache(isolated_home, tmp_path, monkeypatch):
    """A cache of this test's own (the session's shared one would hide decoding), and no data roots."""
    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LTLIB_DATA_ROOTS", raising=False)
    return tmp_path / "cache"


def png(size: tuple[int, int] = (8, 8), seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims ``width``×``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def garbled(blob: bytes) -> bytes:
    """Flip the bytes of the middle third: headers intact, data wrong."""
    a, b = len(blob) // 3, 2 * len(blob) // 3
    return blob[:a] + bytes(x ^ 0x5A for x in blob[a:b]) + blob[b:]


def good(classes: tuple[str, ...] = ("cat", "dog"), n: int = 3, prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{c}/{i}.png": png(seed=10 * k + i) for k, c in enumerate(classes) for i in range(n)}


# A folder; a pax .tar.gz (the fast reader); a GNU .tar whose first member has a long name (tarfile's reader).
FORMS = ["folder", "pax.tar.gz", "gnu.tar"]
LONG = "." + "x" * 120 + ".txt"  # hidden, so it adds no class: it only sends the archive to tarfile


Files = dict[str, bytes | None | tuple[bytes, str]]


def build(parent: Path, files: Files, form: str = "folder") -> Path:
    """A dataset in ``parent``: ``files`` maps a relative path to its bytes, None (a folder) or, in an
    archive, (tar member type, link target). ``form``: "folder" or "<pax|gnu>.tar[.gz|.bz2|.xz]"."""
    if form == "folder":
        root = parent / "data"
        root.mkdir(parents=True)
        for rel, blob in files.items():
            p = root / rel
            if blob is None:
                p.mkdir(parents=True, exist_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(blob)
        return root
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / f"data.{form}"
    flavour, _, compression = form.partition(".tar")
    fmt = tarfile.GNU_FORMAT if flavour == "gnu" else tarfile.PAX_FORMAT
    with tarfile.open(path, f"w:{compression.lstrip('.')}", format=fmt) as tar:
        for rel, blob in {**({LONG: b"long name"} if flavour == "gnu" else {}), **files}.items():
            info = tarfile.TarInfo(rel.rstrip("/"))
            if isinstance(blob, bytes):
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
            else:
                info.type, info.linkname = blob if blob else (tarfile.DIRTYPE, "")
                tar.addfile(info)
    return path


def truncate(path: Path, size: int) -> Path:
    path.write_bytes(path.read_bytes()[:size])
    return path


def load(path: Path):
    return load_dataset("imagefolder", path=str(path))


def refused(call, *fragments: str, kind: type = ValueError) -> str:
    """Run ``call``; it must raise exactly ``kind`` with a one-line message holding every fragment."""
    with pytest.raises(Exception) as info:
        call()
    assert type(info.value) is kind, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert message and "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pytest.mark.hostile
@pytest.mark.parametrize("form", FORMS)
def test_well_formed_data_loads_in_every_form(tmp_path, form):
    ds = load(build(tmp_path, good(n=4), form))
    assert ds.class_names == ["cat", "dog"] and ds.input_shape == (3, 8, 8) and len(ds.y_train) + len(ds.y_test) == 8


@pytest.mark.hostile
def test_the_forms_exercise_both_archive_readers(tmp_path):
    assert len(data._plain_tar_members(build(tmp_path, good(), "pax.tar.gz"))) == 6
    assert data._plain_tar_members(build(tmp_path, good(), "gnu.tar")) is None


def images(ds) -> list[bytes]:
    return sorted(im.tobytes() for im in np.concatenate([ds.x_train.numpy(), ds.x_test.numpy()]))


@pytest.mark.hostile
@pytest.mark.parametrize("form", ["pax.tar", "pax.tar.gz", "pax.tar.bz2", "pax.tar.xz", "gnu.tar.gz"])
def test_every_compression_reads_the_same_images(tmp_path, form):
    assert images(load(build(tmp_path, good(), form))) == images(load(build(tmp_path, good())))


CORRUPT_IMAGES = {
    "empty file": ("dog/bad.png", b""),
    "text named .png": ("dog/bad.png", b"just some notes, not a picture\n"),
    "half a png": ("dog/bad.png", png()[: len(png()) // 2]),
    "garbled png": ("dog/bad.png", garbled(png((32, 32)))),
    "not a jpeg": ("dog/bad.jpg", b"\xff\xd8 not really a jpeg"),
    "half a jpeg": ("dog/bad.jpg", jpeg()[: len(jpeg()) // 2]),
    "gif header only": ("dog/bad.gif", b"GIF89a\x08\x00\x08\x00"),
    "bmp garbage": ("dog/bad.bmp", b"BM" + bytes(range(60))),
    "tiff garbage": ("dog/bad.tif", b"II*\x00" + bytes(range(40))),
    "webp garbage": ("dog/bad.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(8)),
}


@pytest.mark.hostile
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", CORRUPT_IMAGES)
def test_an_undecodable_image_is_named(tmp_path, form, kind):
    rel, blob = CORRUPT_IMAGES[kind]
    path = build(tmp_path, {**good(), rel: blob}, form)
    refused(lambda: load(path), "corrupt image file", rel)


@pytest.mark.hostile
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("width, height", [(30000, 30000), (70000, 1000), (1, 2**27)])
def test_an_image_claiming_too_many_pixels_is_refused_from_its_header(tmp_path, form, width, height):
    path = build(tmp_path, {**good(), "dog/bomb.png": png_claiming(width, height)}, form)
    refused(lambda: load(path), "dog/bomb.png", f"is too large ({width}×{height} pixels; at most {imagedecode.MAX_IMAGE_PIXELS:,})")


@pytest.mark.hostile
def test_the_pixel_limit_is_the_module_constant(tmp_path, monkeypatch):
    monkeypatch.setattr(imagedecode, "MAX_IMAGE_PIXELS", 63)
    refused(lambda: load(build(tmp_path, good())), "is too large (8×8 pixels; at most 63)")


@pytest.mark.hostile
def test_the_decoded_total_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(imagedecode, "MAX_DECODED_BYTES", 1000)
    refused(lambda: load(build(tmp_path, good())), "6 images of 8×8 pixels", "MAX_DECODED_BYTES")


STRUCTURES = {
    "nothing": ({}, "no images found in"),
    "no image files": ({"cat/a.txt": b"x", "dog/b.csv": b"1,2"}, "no images found in"),
    "images outside class folders": ({"0.png": png(), "1.png": png()}, "no images found in"),
    "one class": (good(("cat",)), "has one class folder ('cat'); at least 2 classes are needed"),
    "an empty class folder": ({**good(), "bird/": None}, "class folder 'bird'"),
    "a class of text files": ({**good(), "bird/notes.txt": b"x"}, "class folder 'bird'"),
    "an empty class folder in train": ({**good(prefix="train/"), **good(prefix="test/"), "train/bird/": None}, "class folder 'train/bird'"),
    "a class of one image": ({**good(("cat",)), "dog/0.png": png()}, "needs at least 2 images"),
    "images of two sizes": ({**good(), "dog/big.png": png((9, 8))}, "images differ in size"),
    "test/ without train/": (good(prefix="test/"), "has a test/ folder but no train/"),
    "a class missing from test/": ({**good(prefix="train/"), **good(("cat",), prefix="test/")}, "class 'dog' has no images in the test/"),
    "a class missing from train/": ({**good(("cat",), prefix="train/"), **good(prefix="test/")}, "class 'dog' has no images in the train/"),
    "split and unsplit folders": ({**good(prefix="train/"), **good(("bird", "fish"))}, "mixes train/ or test/ folders"),
    "a control character in a class": ({**good(), "bi\trd/0.png": png(), "bi\trd/1.png": png()}, "control character"),
    "a newline in a class": ({**good(), "bi\nrd/0.png": png(), "bi\nrd/1.png": png()}, "control character"),
}


@pytest.mark.hostile
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", STRUCTURES)
def test_a_bad_layout_is_one_clear_line(tmp_path, form, kind):
    files, fragment = STRUCTURES[kind]
    path = build(tmp_path, files, form)
    refused(lambda: load(path), fragment, str(path))


@pytest.mark.hostile
@pytest.mark.parametrize("form", FORMS)
def test_an_oversized_image_file_is_refused_before_it_is_read(tmp_path, form, monkeypatch):
    path = build(tmp_path, {**good(), "dog/huge.png": png((64, 64))}, form)
    monkeypatch.setattr(data, "MAX_IMAGE_FILE_BYTES", len(png()) + 10)
    refused(lambda: load(path), "dog/huge.png", f"at most {len(png()) + 10:,}")


@pytest.mark.hostile
@pytest.mark.parametrize(
    "what, fragment",
    [
        ("an image where the folder should be", "is neither a folder nor a .tar/.tar.gz archive"),
        ("a zip archive", "is neither a folder nor a .tar/.tar.gz archive"),
        ("a folder named like an image", "is a folder but is named like an image file"),
        ("a fifo where the folder should be", "is neither a folder nor a .tar/.tar.gz archive"),
        ("a fifo named like an image", "is not a regular file"),
        ("a symlink loop", "cannot read"),
        ("a name too long", "cannot read"),
        ("a NUL byte", "contains a NUL byte"),
        ("a missing path", "path does not exist"),
    ],
)
def test_the_wrong_kind_of_path_is_one_line(tmp_path, what, fragment):
    path = tmp_path / "x"
    if what == "an image where the folder should be":
        path.write_bytes(png())
    elif what == "a zip archive":
        path.write_bytes(b"PK\x03\x04" + bytes(40))
    elif what == "a folder named like an image":
        path = build(tmp_path, {**good(), "dog/3.png/": None})
    elif what == "a fifo where the folder should be":
        os.mkfifo(path)  # opening it would block: it must be refused unopened
    elif what == "a fifo named like an image":
        path = build(tmp_path, good())
        os.mkfifo(path / "dog" / "pipe.png")
    elif what == "a symlink loop":
        path.symlink_to(path)
    elif what == "a name too long":
        path = tmp_path / ("x" * 300)
    elif what == "a NUL byte":
        path = tmp_path / "x\0y"
    kind = FileNotFoundError if what == "a missing path" else ValueError
    refused(lambda: load(path), fragment, repr(str(path))[1:-1] if what == "a NUL byte" else str(path), kind=kind)


@pytest.mark.hostile
def test_a_symlink_loop_and_a_broken_symlink_are_named(tmp_path):
    root = build(tmp_path, good())
    (root / "dog" / "loop").symlink_to(root)
    refused(lambda: load(root), "is a symlink loop", str(root / "dog" / "loop"))
    (root / "dog" / "loop").unlink()
    (root / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    refused(lambda: load(root), "is a broken symlink", "gone.png")


@pytest.mark.hostile
def test_an_unreadable_file_is_named(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    root = build(tmp_path, good())
    (root / "dog" / "0.png").chmod(0)
    refused(lambda: load(root), "cannot read", "0.png")


# ----------------------------------------------------------------------------- archives only

ARCHIVE_READERS = ["pax.tar.gz", "gnu.tar"]


@pytest.mark.hostile
@pytest.mark.parametrize("form", ARCHIVE_READERS)
@pytest.mark.parametrize(
    "name", ["../cat/0.png", "/abs/cat/0.png", "data/../../cat/0.png", "cat/../../0.png", "..", "/etc/", "a" * 120 + "/../../cat/0.png"]
)
def test_a_member_outside_the_archive_refuses_the_archive(tmp_path, form, name):
    path = build(tmp_path, {**good(), name: png()}, form)
    refused(lambda: load(path), f"member named {name.rstrip('/')!r}", "points outside the archive", str(path))


@pytest.mark.hostile
@pytest.mark.parametrize("form", ARCHIVE_READERS)
@pytest.mark.parametrize(
    "kind, fragment",
    [
        (tarfile.SYMTYPE, "symlink member 'dog/link.png' → '/etc/passwd'"),
        (tarfile.LNKTYPE, "hard link member 'dog/link.png'"),
        (tarfile.FIFOTYPE, "member 'dog/link.png' that is a device or fifo"),
        (tarfile.CHRTYPE, "member 'dog/link.png' that is a device or fifo"),
    ],
)
def test_links_and_devices_refuse_the_archive(tmp_path, form, kind, fragment):
    path = build(tmp_path, {**good(), "dog/link.png": (kind, "/etc/passwd")}, form)
    refused(lambda: load(path), fragment, str(path))


def archive_bytes(tmp_path: Path, form: str) -> bytes:
    return build(tmp_path / "src", good(n=20), form).read_bytes()


def spoil_second_header(path: Path) -> bytes:
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[1].offset
    blob = path.read_bytes()
    return blob[:offset] + b"\x01" + blob[offset + 1 :]


@pytest.mark.hostile
@pytest.mark.parametrize(
    "form, cut",
    [
        ("pax.tar.gz", 0.5),
        ("pax.tar.gz", 0.9),
        ("gnu.tar.gz", 0.5),
        ("pax.tar.bz2", 0.5),
        ("pax.tar.xz", 0.5),
        ("pax.tar", 0.5),
        ("gnu.tar", 0.5),
    ],
)
def test_a_truncated_archive_is_named(tmp_path, form, cut):
    blob = archive_bytes(tmp_path, form)
    path = tmp_path / f"cut.{form}"
    path.write_bytes(blob[: int(len(blob) * cut)])
    refused(lambda: load(path), str(path), "is truncated or corrupt")


@pytest.mark.hostile
@pytest.mark.parametrize("form", ["pax.tar", "gnu.tar"])
@pytest.mark.parametrize("member", [1, 10, -1])
def test_a_tar_cut_exactly_between_members_is_named(tmp_path, form, member):
    path = build(tmp_path, good(n=10), form)
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[member].offset
    truncate(path, offset)
    refused(lambda: load(path), str(path), "is truncated or corrupt: no end-of-archive marker after byte")


@pytest.mark.hostile
@pytest.mark.parametrize(
    "what, make",
    [
        ("garbled gzip", lambda t: garbled(archive_bytes(t, "pax.tar.gz"))),
        ("garbled bz2", lambda t: garbled(archive_bytes(t, "pax.tar.bz2"))),
        ("garbled xz", lambda t: garbled(archive_bytes(t, "pax.tar.xz"))),
        ("random bytes", lambda t: np.random.default_rng(0).bytes(5000)),
        ("gzip of text", lambda t: gzip.compress(b"hello " * 500)),
        ("bz2 of text", lambda t: bz2.compress(b"hello " * 500)),
        ("xz of text", lambda t: lzma.compress(b"hello " * 500)),
        ("a bad header checksum", lambda t: spoil_second_header(build(t, good(), "pax.tar"))),
        ("gzip magic only", lambda t: b"\x1f\x8b"),
    ],
)
def test_a_corrupt_archive_is_named(tmp_path, what, make):
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(make(tmp_path))
    refused(lambda: load(path), str(path), "is truncated or corrupt")


@pytest.mark.hostile
@pytest.mark.parametrize("form", ["pax.tar.gz", "pax.tar.bz2", "pax.tar.xz", "pax.tar", "gnu.tar.gz"])
def test_an_archive_that_decompresses_past_the_cap_is_refused(tmp_path, form, monkeypatch):
    path = build(tmp_path, {**good(), "padding.bin": bytes(3 * 2**20)}, form)
    monkeypatch.setattr(data, "MAX_ARCHIVE_BYTES", 2**20)
    refused(lambda: load(path), str(path), f"decompresses to more than {2**20:,} bytes")


@pytest.mark.hostile
def test_a_real_gzip_bomb_streams_in_little_memory(tmp_path):
    # 256 MiB of zeros in 1.2 MB of .tar.gz: reading it whole would cost the 256 MiB (and gzip.decompress twice that).
    path = tmp_path / "bomb.tar.gz"
    zeros = 256 * 2**20

    class Zeros(io.RawIOBase):
        left = zeros

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for rel, blob in good().items():
            info = tarfile.TarInfo(rel)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        info = tarfile.TarInfo("zeros.bin")
        info.size = zeros
        tar.addfile(info, io.BufferedReader(Zeros()))
    assert path.stat().st_size < 2 * 2**20
    tracemalloc.start()
    try:
        ds = load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(ds.y_train) + len(ds.y_test) == 6 and peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.hostile
@pytest.mark.parametrize("form", ["pax.tar.gz", "pax.tar", "gnu.tar", "pax.tar.xz"])
@pytest.mark.parametrize("seed", range(6))
def test_random_damage_to_an_archive_never_escapes(tmp_path, form, seed):
    rng = np.random.default_rng(seed)
    blob = bytearray(build(tmp_path / "src", {**good(), "dog/x.jpg": jpeg()}, form).read_bytes())
    for _ in range(3):  # overwrite, cut out or insert a few bytes
        pos, n = int(rng.integers(len(blob))), int(rng.integers(1, 40))
        blob[pos : pos + (n if seed % 3 != 2 else 0)] = rng.bytes(n) if seed % 3 != 1 else b""
    path = tmp_path / f"damaged.{form}"
    path.write_bytes(bytes(blob))
    try:
        load(path)
    except Exception:  # refused() checks the type and that the one line names the archive
        refused(lambda: load(path), str(path))


@pytest.mark.hostile
def test_an_empty_archive_file_is_one_line(tmp_path):
    path = tmp_path / "empty.tar.gz"
    path.write_bytes(b"")
    refused(lambda: load(path), str(path), "is truncated or corrupt: the file is empty")


# ----------------------------------------------------------------------------- Fashion-MNIST IDX files

FASHION = {"train-images-idx3": (12, 28, 28), "train-labels-idx1": (12,), "t10k-images-idx3": (4, 28, 28), "t10k-labels-idx1": (4,)}


def idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.astype(np.uint8).tobytes()


def fashion_root(tmp_path: Path, **replace: bytes | None) -> Path:
    """Four small IDX .gz files; ``replace`` gives a file's raw (uncompressed) bytes, or None for a folder in its place."""
    root = tmp_path / "fashion"
    root.mkdir()
    for key, shape in FASHION.items():
        arr = np.arange(int(np.prod(shape))).reshape(shape) % (10 if "labels" in key else 256)
        raw = replace.get(key.replace("-", "_"), idx(arr))
        if raw is None:
            (root / f"{key}-ubyte.gz").mkdir()
        else:
            (root / f"{key}-ubyte.gz").write_bytes(gzip.compress(raw, compresslevel=1))
    return root


def fashion(root: Path):
    return load_dataset("fashion-mnist", root=str(root))


@pytest.mark.hostile
def test_small_idx_files_load(tmp_path):
    ds = fashion(fashion_root(tmp_path))
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28) and ds.y_train.max() == 9


@pytest.mark.hostile
@pytest.mark.parametrize(
    "key, raw, fragment",
    [
        ("train_images_idx3", b"\x00\x00\x0d\x03" + bytes(20), "is not an IDX file of unsigned bytes"),
        ("train_images_idx3", b"PK\x03\x04", "is not an IDX file"),
        ("train_images_idx3", b"\x00\x00\x08\x09", "is not an IDX file"),
        ("train_images_idx3", b"\x00\x00", "is not an IDX file"),
        ("train_images_idx3", b"\x00\x00\x08\x03\x00\x00", "is truncated: its header ends"),
        ("train_images_idx3", idx(np.zeros((12, 28, 28)))[:-100], "is truncated: its header says 9,408 bytes"),
        ("train_images_idx3", idx(np.zeros((12, 28, 28))) + b"extra", "holds more data than its header says"),
        ("train_images_idx3", b"\x00\x00\x08\x03" + struct.pack(">III", 60000, 10000, 10000), "claims 60000×10000×10000"),
        ("train_labels_idx1", idx(np.full(12, 10)), "has label 10; allowed: 0 to 9"),
        ("train_labels_idx1", idx(np.zeros(11)), "do not fit together"),
        ("t10k_images_idx3", idx(np.zeros((4, 27, 28))), "do not fit together"),
        ("t10k_labels_idx1", idx(np.zeros((4, 1))), "do not fit together"),
        ("train_images_idx3", None, "is a folder; expected an IDX file"),
    ],
)
def test_a_bad_idx_file_is_one_line(tmp_path, key, raw, fragment):
    root = fashion_root(tmp_path, **{key: raw})
    refused(lambda: fashion(root), fragment, str(root))


@pytest.mark.hostile
@pytest.mark.parametrize("cut", [0.3, 0.7])
def test_a_truncated_idx_gz_is_named(tmp_path, cut):
    root = fashion_root(tmp_path)
    f = root / "train-images-idx3-ubyte.gz"
    blob = gzip.compress(idx(np.random.default_rng(0).integers(0, 255, (12, 28, 28))), compresslevel=1)
    f.write_bytes(blob[: int(len(blob) * cut)])
    refused(lambda: fashion(root), str(f), "is truncated or corrupt")


@pytest.mark.hostile
def test_an_idx_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_IDX_BYTES", 1000)
    root = fashion_root(tmp_path)
    refused(lambda: fashion(root), "train-images-idx3-ubyte.gz claims 12×28×28 = 9,408 bytes of data; at most 1,000")


@pytest.mark.hostile
@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_the_real_idx_files_fit_the_default_cap():
    assert data._read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").shape == (60000, 28, 28)


# ----------------------------------------------------------------------------- the decoded-data cache


def npz_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.hostile
@pytest.mark.parametrize("change", ["add an image", "delete an image", "rewrite an image", "add a class"])
def test_the_cache_follows_the_files_inside_class_folders(tmp_path, cache, change):
    root = build(tmp_path, good(n=4))
    before = load(root)
    if change == "add an image":
        (root / "dog" / "9.png").write_bytes(png(seed=99))
    elif change == "delete an image":
        (root / "dog" / "0.png").unlink()
    elif change == "rewrite an image":
        (root / "dog" / "0.png").write_bytes(png(seed=123))
        os.utime(root / "dog" / "0.png", ns=(1, 1))  # even if size and mtime happened to match before
    else:
        (root / "bird").mkdir()
        for i in range(2):
            (root / "bird" / f"{i}.png").write_bytes(png(seed=50 + i))
    after = load(root)
    assert images(after) != images(before)
    expected = {"add an image": 9, "delete an image": 7, "rewrite an image": 8, "add a class": 10}[change]
    assert len(after.y_train) + len(after.y_test) == expected
    assert len([n for n in npz_files(cache) if n.endswith(".npz")]) == 2


@pytest.mark.hostile
def test_the_cache_follows_a_rewritten_archive(tmp_path):
    path = build(tmp_path, good(n=3), "pax.tar.gz")
    assert len(load(path).y_train) == 4
    build(tmp_path / "rebuilt", good(n=5), "pax.tar.gz").replace(path)
    ds = load(path)
    assert len(ds.y_train) + len(ds.y_test) == 10


def cached_file(cache: Path) -> Path:
    (npz,) = [p for p in cache.iterdir() if p.suffix == ".npz"]
    return npz


BAD_CACHES = {
    "cut short": lambda b: b[: len(b) // 2],
    "cut to one byte": lambda b: b[:1],
    "empty": lambda b: b"",
    "garbage": lambda b: np.random.default_rng(0).bytes(len(b)),
    "garbled": garbled,
    "missing keys": lambda b: npz(classes=np.array(["cat", "dog"])),
    "wrong dtype": lambda b: npz(classes=np.array(["cat", "dog"]), x_all=np.zeros((4, 3, 8, 8), np.float32), y_all=np.zeros(4, np.int64)),
    "labels out of range": lambda b: npz(classes=np.array(["cat", "dog"]), x_all=np.zeros((4, 3, 8, 8), np.uint8), y_all=np.full(4, 7)),
    "pickled objects": lambda b: npz(classes=np.array([{"evil": 1}, "x"], dtype=object)),
    "an .npy": lambda b: (lambda f: (np.save(f, np.zeros(3)), f.getvalue())[1])(io.BytesIO()),
}


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.hostile
@pytest.mark.parametrize("form", ["folder", "pax.tar.gz"])
@pytest.mark.parametrize("kind", BAD_CACHES)
def test_a_bad_cache_file_is_decoded_again(tmp_path, cache, form, kind):
    path = build(tmp_path, good(), form)
    first = load(path)
    npz_path = cached_file(cache)
    npz_path.write_bytes(BAD_CACHES[kind](npz_path.read_bytes()))
    again = load(path)
    assert np.array_equal(again.x_train.numpy(), first.x_train.numpy())
    with np.load(npz_path, allow_pickle=False) as z:
        assert sorted(z.files) == ["classes", "x_all", "y_all"]


@pytest.mark.hostile
def test_a_cache_entry_that_is_a_folder_is_one_line(tmp_path, cache):
    root = build(tmp_path, good())
    load(root)
    npz_path = cached_file(cache)
    npz_path.unlink()
    npz_path.mkdir()
    refused(lambda: load(root), "cannot use the dataset cache", str(npz_path))


@pytest.mark.hostile
def test_a_cache_path_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "not-a-folder"))
    refused(lambda: load(build(tmp_path, good())), "cannot use the dataset cache", "not-a-folder", "LTLIB_CACHE")


@pytest.mark.hostile
def test_an_empty_cache_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("LTLIB_CACHE", "")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)  # platformdirs' Linux default then
    assert data.cache_dir() == Path.home() / ".cache" / "ltlib"


@pytest.mark.hostile
def test_decoding_leaves_only_the_cache_file(tmp_path, cache):
    load(build(tmp_path, good()))
    one_class = build(tmp_path / "x", good(("cat",)))
    refused(lambda: load(one_class), "one class")
    assert [n[-4:] for n in npz_files(cache)] == [".npz"]


def _decode_concurrently(folder: str, log: str, barrier) -> None:
    real = data._decode_tree

    def counted(*args):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # widen the window in which the others ask for the same folder
        return real(*args)

    data._decode_tree = counted
    barrier.wait()
    ds = load_dataset("imagefolder", path=folder)
    os._exit(0 if len(ds.y_train) + len(ds.y_test) == 8 else 3)


@pytest.mark.hostile
def test_four_processes_opening_a_new_folder_decode_it_once(tmp_path, cache):
    root = build(tmp_path, good(n=4))
    log = tmp_path / "decodes.log"
    ctx = multiprocessing.get_context("fork")  # real processes with ltlib already imported: no 4 × 2 s torch import
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_decode_concurrently, args=(str(root), str(log), barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(log.read_text().split()) == 1
    assert [n[-4:] for n in npz_files(cache)] == [".npz"]


def _hold_lock_forever(cached: str, ready) -> None:
    with data._cache_lock(Path(cached)):
        ready.set()
        time.sleep(60)


@pytest.mark.hostile
def test_a_process_killed_while_holding_the_lock_does_not_block_the_next(tmp_path, cache):
    root = build(tmp_path, good())
    files, folders = data._folder_files(root, None)
    cached = cache / f"imagefolder-{data._cache_key(root, files, folders)}.npz"
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock_forever, args=(str(cached), ready))
    holder.start()
    assert ready.wait(20)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    ds = load(root)
    assert len(ds.y_train) + len(ds.y_test) == 6 and cached.exists()


# ----------------------------------------------------------------------------- data roots


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """An allowed root (holding a good folder) and, beside it, a secret outside it."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    inside = build(allowed, good())
    secret = build(outside, {**good(("secret", "other")), "loose.png": png(seed=7)})
    monkeypatch.setenv("LTLIB_DATA_ROOTS", str(allowed))
    return inside, secret


@pytest.mark.hostile
@pytest.mark.parametrize(
    "what",
    ["a linked image file", "a linked class folder", "a linked top folder", "a linked archive", "a path outside", "a .. path"],
)
def test_nothing_outside_the_data_roots_is_read(tmp_path, roots, what):
    inside, outside = roots
    if what == "a linked image file":
        (inside / "dog" / "stolen.png").symlink_to(outside / "loose.png")
        target, named = inside, inside / "dog" / "stolen.png"
    elif what == "a linked class folder":
        (inside / "secret").symlink_to(outside / "secret")
        target, named = inside, inside / "secret"
    elif what == "a linked top folder":
        (inside.parent / "link").symlink_to(outside)
        target = named = inside.parent / "link"
    elif what == "a linked archive":
        archive = build(outside.parent / "a", good(), "pax.tar.gz")
        (inside.parent / "data.tar.gz").symlink_to(archive)
        target = named = inside.parent / "data.tar.gz"
    elif what == "a path outside":
        target = named = outside
    else:
        target = named = inside / ".." / ".." / "outside" / "data"
    refused(lambda: load(target), f"{named} is outside the allowed data roots", str(inside.parent))


@pytest.mark.hostile
def test_links_within_the_data_roots_are_followed(roots):
    inside, _ = roots
    (inside / "dog" / "again.png").symlink_to(inside / "cat" / "0.png")
    assert len(load(inside).y_train) + len(load(inside).y_test) == 7


@pytest.mark.hostile
def test_without_data_roots_links_anywhere_are_followed(roots, monkeypatch):
    inside, outside = roots
    monkeypatch.delenv("LTLIB_DATA_ROOTS")
    (inside / "secret").symlink_to(outside / "secret")
    assert "secret" in load(inside).class_names


@pytest.mark.hostile
def test_cifar10_and_fashion_paths_are_confined_too(tmp_path, roots):
    inside, outside = roots
    refused(lambda: load_dataset("cifar10", path=str(outside)), "is outside the allowed data roots")
    fashion_dir = fashion_root(outside.parent)
    (inside.parent / "fashion").mkdir()
    for f in fashion_dir.iterdir():
        (inside.parent / "fashion" / f.name).symlink_to(f)
    refused(lambda: fashion(inside.parent / "fashion"), "ubyte.gz is outside the allowed data roots")


# ----------------------------------------------------------------------------- the decoding pipe


def items(n: int = 6) -> list[tuple[str, bytes]]:
    return [(f"img{i}.png", png(seed=i)) for i in range(n)]


@pytest.mark.hostile
def test_the_worker_pipe_holds_no_pickle():
    source = Path(imagedecode.__file__).read_text()
    assert "pickle" not in source.replace("allow_pickle", "").replace("pickled", "")


def frame(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack(">Q", len(payload)) + payload


def saved(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


class Touch:
    """Unpickled, it creates ``path``: the proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


@pytest.mark.hostile
@pytest.mark.parametrize(
    "answer, kind",
    [
        (b"", RuntimeError),
        (b"A", RuntimeError),
        (frame(b"X", b""), RuntimeError),
        (frame(b"A", b"short")[:-2], RuntimeError),
        (frame(b"A", b"12345"), RuntimeError),
        (frame(b"A", saved(np.zeros((2, 8, 8), np.uint8))), RuntimeError),
        (frame(b"A", saved(np.zeros((2, 8, 8, 3), np.float32))), RuntimeError),
        (frame(b"A", saved(np.zeros((3, 8, 8, 3), np.uint8))), RuntimeError),
        (frame(b"E", "bad 'img.png' \udcff".encode("utf-8", "surrogateescape")), ValueError),
    ],
)
def test_a_malformed_worker_answer_is_refused(answer, kind):
    with pytest.raises(kind):
        imagedecode._read_answer(answer, 2)


@pytest.mark.hostile
@pytest.mark.parametrize("tag", [b"A", b"E"])
@pytest.mark.parametrize("wrap", ["a raw pickle", "an object array"])
def test_the_parent_never_unpickles_a_worker_answer(tmp_path, tag, wrap):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(Touch(marker)) if wrap == "a raw pickle" else saved(np.array([Touch(marker)], dtype=object))
    with pytest.raises((RuntimeError, ValueError)):
        imagedecode._read_answer(frame(tag, payload), 1)
    assert not marker.exists()


@pytest.mark.hostile
def test_the_worker_never_unpickles_its_input(tmp_path):
    marker = tmp_path / "unpickled"
    worker = subprocess.run(
        [sys.executable, "-I", imagedecode.__file__], input=pickle.dumps([("x.png", Touch(marker))]), capture_output=True
    )
    assert not marker.exists() and worker.stdout[:1] in (b"", b"E")


@pytest.mark.hostile
def test_the_item_framing_round_trips_odd_names(monkeypatch):
    odd = [("ü/\udcff name.png", b"\x00" * 3), ("", b""), ("a\nb.png", png())]
    monkeypatch.setattr(imagedecode, "MAX_IMAGE_PIXELS", 123)
    assert imagedecode._decode_items(imagedecode._encode_items(odd)) == (123, odd)


@pytest.mark.hostile
@pytest.mark.parametrize("kind", ["empty file", "half a png", "not a jpeg"])
def test_workers_report_a_corrupt_file_by_name(kind):
    rel, blob = CORRUPT_IMAGES[kind]
    batch = [*items(), (rel, blob), *items()]
    refused(lambda: imagedecode.decode_all(batch, workers=2, min_for_processes=0), f"corrupt image file {rel!r}")


@pytest.mark.hostile
def test_workers_report_a_size_mismatch_across_chunks():
    batch = [*items(4), *[(f"big{i}.png", png((9, 9))) for i in range(4)]]
    refused(
        lambda: imagedecode.decode_all(batch, workers=2, min_for_processes=0),
        "images differ in size",
        "'img0.png' is 8×8",
        "'big0.png' is 9×9",
    )


@pytest.mark.hostile
def test_workers_apply_the_parents_pixel_limit(monkeypatch):
    monkeypatch.setattr(imagedecode, "MAX_IMAGE_PIXELS", 70)
    batch = [*items(2), *[(f"big{i}.png", png((9, 9))) for i in range(2)]]  # the parent checks only the first (8×8)
    refused(lambda: imagedecode.decode_all(batch, workers=2, min_for_processes=0), "'big0.png' is too large (9×9 pixels; at most 70)")


@pytest.mark.hostile
def test_a_worker_that_sends_garbage_falls_back_to_decoding_here(monkeypatch):
    monkeypatch.setattr(imagedecode, "_run_worker", lambda chunk: imagedecode._read_answer(b"garbage", len(chunk)))
    assert imagedecode.decode_all(items(), workers=2, min_for_processes=0).shape == (6, 8, 8, 3)


# ----------------------------------------------------------------------------- end to end through the CLI


@pytest.fixture
def cli(capsys):
    from ltlib.cli import main

    saved = signal.getsignal(signal.SIGTERM)

    def run(*argv: str) -> tuple[int, list[str]]:
        code = main(["train", "--dataset", "imagefolder", "--quiet", *argv])
        return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]

    yield run
    signal.signal(signal.SIGTERM, saved)


@pytest.mark.hostile
@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda t: build(t, {**good(), "dog/bomb.png": png_claiming(30000, 30000)}), "is too large (30000×30000 pixels"),
        (lambda t: truncate(build(t, good(n=20), "pax.tar.gz"), 300), "is truncated or corrupt"),
        (lambda t: build(t, {**good(), "../evil/0.png": png()}, "pax.tar.gz"), "points outside the archive"),
        (lambda t: build(t, {**good(), "bird/": None}), "class folder 'bird'"),
    ],
    ids=["pixel bomb", "truncated archive", "member outside", "empty class folder"],
)
def test_the_cli_prints_one_error_line_and_exits_2(tmp_path, cli, make, fragment):
    code, lines = cli("--dataset-param", f"path={make(tmp_path)}")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
