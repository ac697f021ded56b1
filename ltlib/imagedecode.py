"""Decode image files with Pillow in worker processes: one fresh interpreter per core, without torch.

Pillow's per-image Python work holds the GIL, so threads do not scale; processes do. Each worker is
this file run as a script, so it starts in ~0.1 s (numpy and Pillow only) whatever the parent's
``__main__`` is (a notebook, Streamlit, the CLI). It reads a pickled list of ``(name, bytes)`` from
stdin and writes back a pickled ``("ok", uint8 array N×H×W×3)`` or ``("error", message)``.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def decode_one(name: str, blob: bytes) -> np.ndarray:
    """One image file's bytes → an H×W×3 uint8 array; a corrupt file raises ValueError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"corrupt image file {name!r}: {e}") from None


def _check_one_size(shapes: set[tuple[int, ...]]) -> None:
    if len(shapes) > 1:
        raise ValueError(f"images differ in size ({sorted(shapes)[:3]} …); resize them to one size first")


def stack(images: list[np.ndarray]) -> np.ndarray:
    """Stack decoded images, or explain that they differ in size."""
    _check_one_size({im.shape for im in images})
    return np.stack(images)


def decode_chunk(items: list[tuple[str, bytes]]) -> np.ndarray:
    return stack([decode_one(name, blob) for name, blob in items])


def _run_worker(items: list[tuple[str, bytes]]) -> np.ndarray:
    proc = subprocess.Popen([sys.executable, "-I", __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = proc.communicate(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))
    if proc.returncode != 0 or not out:
        raise RuntimeError(f"image decoding worker exited with status {proc.returncode}")
    status, value = pickle.loads(out)
    if status == "error":
        raise ValueError(value)
    return value


def decode_all(items: list[tuple[str, bytes]], workers: int | None = None, min_for_processes: int = 4096) -> np.ndarray:
    """Every image as one N×H×W×3 uint8 array, in order; decoded in ``workers`` processes (default: one per core).

    Fewer than ``min_for_processes`` images are decoded here: a pool would cost more to start than it saves.
    """
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(items) < min_for_processes:
        return decode_chunk(items)
    size = -(-len(items) // workers)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    try:
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            return stack_chunks(list(pool.map(_run_worker, chunks)))
    except RuntimeError:  # a worker could not start or died: decode here instead
        return decode_chunk(items)


def stack_chunks(parts: list[np.ndarray]) -> np.ndarray:
    """Join the workers' stacks (each already of one size), or explain that they differ."""
    _check_one_size({p.shape[1:] for p in parts})
    return np.concatenate(parts)


def _worker_main() -> None:
    items = pickle.load(sys.stdin.buffer)
    try:
        result = ("ok", decode_chunk(items))
    except ValueError as e:
        result = ("error", str(e))
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _worker_main()
