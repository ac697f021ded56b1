"""Train several configurations together: the path for method tables, seed sweeps and the app's Compare.

On a GPU each run trains in its own thread on its own CUDA stream. A run's epoch is a few CUDA-graph
replays (``ltlib.fast``) launched asynchronously, so the host is free while the GPU works and the
replays of different runs overlap on the device: one small ResNet leaves most of an H100 idle.
On a CPU the runs train one after another (two cores gain nothing from overlapping them).
Datasets are loaded once and shared; every run stays fully determined by its own config.

    ltlib sweep --preset cifar10-lt --grid loss=ce,balanced_softmax --grid seed=0,1,2,3
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import torch

from ltlib.data import Dataset, load_dataset
from ltlib.train import Config, Event, Result, resolve_device, train


def grid(base: Config, axes: dict[str, list[Any]]) -> list[Config]:
    """The cartesian product of ``axes`` (config field → values) applied to ``base``."""
    names = list(axes)
    return [replace(base, **dict(zip(names, values))) for values in itertools.product(*(axes[n] for n in names))]


def _dataset_key(cfg: Config) -> str:
    return json.dumps([cfg.dataset, cfg.dataset_params], sort_keys=True)


def _datasets(configs: list[Config]) -> dict[str, Dataset]:
    """Each distinct dataset once (keyed by name and parameters)."""
    out: dict[str, Dataset] = {}
    for cfg in configs:
        if _dataset_key(cfg) not in out:
            out[_dataset_key(cfg)] = load_dataset(cfg.dataset, **cfg.dataset_params)
    return out


def train_many(
    configs: Iterable[Config],
    callbacks: Iterable[Callable[[int, Event], None]] = (),
    cancel: threading.Event | None = None,
    save: bool = True,
    root: str | None = None,
    concurrent: bool | None = None,
) -> list[Result]:
    """Train every config (concurrently on a GPU) and return their results in order.

    ``callbacks`` receive ``(index of the config, event)``. All configs are validated before any
    training starts, so a bad one fails fast and leaves no run folder. ``concurrent`` (default: only
    when a run is on a GPU) trains in threads.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("train_many needs at least one config")
    for cfg in configs:
        cfg.validate()
    callbacks = list(callbacks)
    data = _datasets(configs)

    if concurrent is None:
        concurrent = any(resolve_device(c.device).type == "cuda" for c in configs)
    # Concurrent runs start training together, once every run has set up (and captured its graph):
    # a capture must not overlap another run's training kernels.
    ready = threading.Barrier(len(configs) if concurrent else 1)

    def run(i: int) -> Result:
        cfg = configs[i]
        ds = data[_dataset_key(cfg)]

        def sink(e: Event) -> None:
            if e.kind == "start":
                ready.wait()
            for cb in callbacks:
                cb(i, e)

        try:
            device = resolve_device(cfg.device)
            if device.type != "cuda":
                return train(cfg, [sink], cancel, ds, save, root)
            with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
                return train(cfg, [sink], cancel, ds, save, root)
        except BaseException:
            ready.abort()  # the other runs stop waiting for this one
            raise

    if not concurrent:
        return [run(i) for i in range(len(configs))]
    with ThreadPoolExecutor(max_workers=len(configs)) as pool:
        return list(pool.map(run, range(len(configs))))
