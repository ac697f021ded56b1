"""Decode image files with Pillow in worker processes: one fresh interpreter per core, without torch.

Pillow's per-image Python work holds the GIL, so threads do not scale; processes do. Each worker is
this file run as a script, so it starts in ~0.1 s (numpy and Pillow only) whatever the parent's
``__main__`` is (a notebook, Streamlit, the CLI). Nothing on the pipe is pickled (unpickling runs
code): the parent writes the pixel limit and length-prefixed ``(name, bytes)`` records, the worker
answers with one frame, a tag byte and a length, holding either an ``np.save`` array (read back with
``allow_pickle=False``) or a UTF-8 error message.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# At most this many pixels per image (8192×8192, 192 MiB as RGB), checked from the header before decoding.
MAX_IMAGE_PIXELS = 2**26
# At most this many bytes for all decoded images together (N × H × W × 3), checked from the first image.
MAX_DECODED_BYTES = 16 * 2**30

_PIL_LOCK = threading.Lock()
_OK, _ERROR = b"A", b"E"
_FRAME = struct.Struct(">cQ")  # tag, payload length
_NAME, _BLOB = struct.Struct(">I"), struct.Struct(">Q")


def decode_one(name: str, blob: bytes, max_pixels: int | None = None) -> np.ndarray:
    """One image file's bytes → an H×W×3 uint8 array; a bad or oversized file raises ValueError naming it."""
    from PIL import Image, UnidentifiedImageError

    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if not blob:
        raise ValueError(f"corrupt image file {name!r}: the file is empty")
    # Both settings are process-wide, hence the lock: Pillow's bomb limit is lifted while the header is
    # read (so that the check below can name the size), and its warnings about damaged files are
    # silenced (such a file either decodes or ends in the ValueError that names it).
    with _PIL_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(io.BytesIO(blob))  # reads the header only
        except UnidentifiedImageError:
            raise ValueError(f"corrupt image file {name!r}: not an image Pillow can read") from None
        except Exception as e:
            raise _corrupt(name, e) from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
        with im:
            w, h = im.size
            if w * h > limit:
                raise ValueError(f"image file {name!r} is too large ({w}×{h} pixels; at most {limit:,})")
            try:
                return np.asarray(im.convert("RGB"))
            except MemoryError:
                raise
            except Exception as e:
                raise _corrupt(name, e) from None


def _corrupt(name: str, error: Exception) -> ValueError:
    # Pillow's decoders raise many types on bad bytes (OSError, ValueError, SyntaxError, struct.error, …).
    return ValueError(f"corrupt image file {name!r}: {' '.join(str(error).split()) or type(error).__name__}")


def _size_error(first: str, shape: tuple[int, ...], other: str, other_shape: tuple[int, ...]) -> ValueError:
    return ValueError(
        f"images differ in size: {first!r} is {shape[1]}×{shape[0]} but {other!r} is {other_shape[1]}×{other_shape[0]}; "
        "resize them to one size first"
    )


def decode_chunk(items: list[tuple[str, bytes]], max_pixels: int | None = None) -> np.ndarray:
    """Decode in this process; every image must have the first one's size."""
    images: list[np.ndarray] = []
    for name, blob in items:
        im = decode_one(name, blob, max_pixels)
        if images and im.shape != images[0].shape:
            raise _size_error(items[0][0], images[0].shape, name, im.shape)
        images.append(im)
    return np.stack(images)


def _encode_items(items: list[tuple[str, bytes]]) -> bytes:
    parts = [_BLOB.pack(MAX_IMAGE_PIXELS)]
    for name, blob in items:
        raw = name.encode("utf-8", "surrogateescape")
        parts += [_NAME.pack(len(raw)), raw, _BLOB.pack(len(blob)), blob]
    return b"".join(parts)


def _decode_items(data: bytes) -> tuple[int, list[tuple[str, bytes]]]:
    (max_pixels,), pos, items = _BLOB.unpack_from(data), _BLOB.size, []
    while pos < len(data):
        (n,) = _NAME.unpack_from(data, pos)
        name = data[pos + _NAME.size : pos + _NAME.size + n].decode("utf-8", "surrogateescape")
        pos += _NAME.size + n
        (n,) = _BLOB.unpack_from(data, pos)
        items.append((name, data[pos + _BLOB.size : pos + _BLOB.size + n]))
        pos += _BLOB.size + n
    return max_pixels, items


def _read_answer(out: bytes, count: int) -> np.ndarray:
    """A worker's frame → its array, or the ValueError it reported; RuntimeError when the frame is malformed."""
    if len(out) < _FRAME.size:
        raise RuntimeError("image decoding worker sent no answer")
    tag, length = _FRAME.unpack_from(out)
    payload = out[_FRAME.size :]
    if len(payload) != length or tag not in (_OK, _ERROR):
        raise RuntimeError("image decoding worker sent a malformed answer")
    if tag == _ERROR:
        raise ValueError(payload.decode("utf-8", "replace"))
    try:
        arr = np.load(io.BytesIO(payload), allow_pickle=False)
    except ValueError as e:
        raise RuntimeError(f"image decoding worker sent an unreadable array: {e}") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or len(arr) != count:
        raise RuntimeError("image decoding worker sent an array of the wrong shape or type")
    return arr


def _run_worker(items: list[tuple[str, bytes]]) -> np.ndarray:
    proc = subprocess.Popen([sys.executable, "-I", __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = proc.communicate(_encode_items(items))
    if proc.returncode != 0:
        raise RuntimeError(f"image decoding worker exited with status {proc.returncode}")
    return _read_answer(out, len(items))


def decode_all(items: list[tuple[str, bytes]], workers: int | None = None, min_for_processes: int = 4096) -> np.ndarray:
    """Every image as one N×H×W×3 uint8 array, in order; decoded in ``workers`` processes (default: one per core).

    Fewer than ``min_for_processes`` images are decoded here: a pool would cost more to start than it saves.
    The first image is decoded here first, so that the total size is checked before the rest are decoded.
    """
    if not items:
        raise ValueError("no image files to decode")
    first = decode_one(*items[0])
    if len(items) * first.nbytes > MAX_DECODED_BYTES:
        h, w, _ = first.shape
        raise ValueError(
            f"{len(items):,} images of {w}×{h} pixels (like {items[0][0]!r}) would take {len(items) * first.nbytes / 2**30:.1f} GiB "
            f"decoded; at most {MAX_DECODED_BYTES / 2**30:g} GiB (ltlib.imagedecode.MAX_DECODED_BYTES); use smaller images"
        )
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(items) < min_for_processes:
        return decode_chunk(items)
    size = -(-len(items) // workers)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    try:
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            parts = list(pool.map(_run_worker, chunks))
    except RuntimeError:  # a worker could not start, died or sent garbage: decode here instead
        return decode_chunk(items)
    for part, chunk in zip(parts, chunks):
        if part.shape[1:] != first.shape:
            raise _size_error(items[0][0], first.shape, chunk[0][0], part.shape[1:])
    return np.concatenate(parts)


def _worker_main() -> None:
    max_pixels, items = _decode_items(sys.stdin.buffer.read())
    try:
        buf = io.BytesIO()
        np.save(buf, decode_chunk(items, max_pixels), allow_pickle=False)
        tag, payload = _OK, buf.getvalue()
    except ValueError as e:
        tag, payload = _ERROR, str(e).encode("utf-8", "replace")
    sys.stdout.buffer.write(_FRAME.pack(tag, len(payload)) + payload)


if __name__ == "__main__":
    # A Ctrl-C reaches the whole process group: the parent reports it in one line, the workers quietly stop.
    try:
        _worker_main()
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(130)
