"""Train several configurations together: the path for method tables, seed sweeps and the app's Compare.

On a GPU each run trains in its own thread on its own CUDA stream, and the runs that use the graph
engine with the same architecture, data size and optimiser settings train as one model-stack
(``ltlib.stack``): up to ``MAX_STACK`` models side by side in one network, one grouped-convolution
kernel per layer for all of them, one CUDA-graph epoch (``ltlib.fast``). Each run keeps its own
data, sampler, augmentation draws, head, loss and schedule, evaluates its own model and is saved
as its own run. Runs that cannot stack (eager methods, other shapes) train beside the stacks on
their own streams. On a CPU the runs train one after another (two cores gain nothing from
overlapping them). Datasets are loaded once and shared; every run stays determined by its own config.

    ltlib sweep --preset cifar10-lt --grid loss=ce,balanced_softmax --grid seed=0,1,2,3
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import torch

from ltlib.data import Dataset, load_dataset
from ltlib.families import chosen
from ltlib.fast import GraphEpoch, Member
from ltlib.models import Classifier
from ltlib.stack import copy_pairs, stack_backbones, stack_reason
from ltlib.train import Config, Event, Result, choose_engine, prepare_data, resolve_device, train, with_validation_split

# Models per stack: eight ResNet-32s already keep an H100 busy (docs/performance.md).
MAX_STACK = 8


def grid(base: Config, axes: dict[str, list[Any]]) -> list[Config]:
    """The cartesian product of ``axes`` (config field → values) applied to ``base``."""
    names = list(axes)
    return [replace(base, **dict(zip(names, values))) for values in itertools.product(*(axes[n] for n in names))]


def stackable(cfg: Config) -> bool:
    """A run joins a model-stack unless one of its methods changes the step mid-run ("changes step":
    a stage switch, SAM or a mixing method switching on), which needs a fresh graph epoch of its own."""
    return not any("changes step" in entry.traits for _, entry, _ in chosen(cfg))


def _dataset_key(cfg: Config) -> str:
    return json.dumps([cfg.dataset, cfg.dataset_params], sort_keys=True)


def _datasets(configs: list[Config]) -> dict[str, Dataset]:
    """Each distinct dataset once (keyed by name and parameters)."""
    out: dict[str, Dataset] = {}
    for cfg in configs:
        if _dataset_key(cfg) not in out:
            out[_dataset_key(cfg)] = load_dataset(cfg.dataset, **cfg.dataset_params)
    return out


class _Stack:
    """A graph epoch shared by several runs; its epoch starts once every active run has handed in its order.

    Each run hands in its epoch's sample order and learning rate from its own thread (and CUDA
    stream); the last one launches the epoch on the stack's stream, after the others' hand-ins
    (CUDA events), and the stack's weights are then copied into each run's own model, which the
    run evaluates and saves. A run that stops (finished, failed, cancelled) leaves, and the others go on.
    """

    def __init__(self, epoch: GraphEpoch, slots: list[int], models: list[Classifier], device: torch.device) -> None:
        self.epoch, self.slots = epoch, slots
        stacked = len(slots) > 1
        self.sources, self.targets = copy_pairs(epoch.backbone, [m.backbone for m in models]) if stacked else ([], [])
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.done = torch.cuda.Event() if self.cuda else None
        self.cond = threading.Condition()
        self.active = set(slots)
        self.pending: dict[int, tuple[torch.cuda.Event | None, float]] = {}  # slot → (its hand-in event on a GPU, its lr)
        self.generation = 0
        self.error: BaseException | None = None

    def submit(self, slot: int, order: torch.Tensor, lr: float) -> None:
        self.epoch.orders[self.slots.index(slot)].copy_(order, non_blocking=True)
        handed_in = torch.cuda.current_stream().record_event() if self.cuda else None
        with self.cond:
            self.pending[slot] = (handed_in, lr)
            generation = self.generation
            self._launch_when_complete()
            while self.generation == generation:
                self.cond.wait()
            if self.error is not None:
                raise RuntimeError(f"the model-stack stopped: {self.error}") from self.error
        if self.done is not None:  # on a GPU
            torch.cuda.current_stream().wait_event(self.done)

    def leave(self, slot: int) -> None:
        with self.cond:
            self.active.discard(slot)
            self._launch_when_complete()

    def _launch_when_complete(self) -> None:
        if not self.active or not self.active <= set(self.pending):
            return
        try:
            rates = {lr for _, lr in self.pending.values()}
            if len(rates) > 1:
                raise RuntimeError(f"stacked runs need one learning rate per epoch; got {sorted(rates)}")
            if self.stream is not None and self.done is not None:  # on a GPU
                with torch.cuda.stream(self.stream):
                    for handed_in, _ in self.pending.values():
                        assert handed_in is not None, "every run hands in an event on a GPU"
                        self.stream.wait_event(handed_in)
                    self._epoch(rates.pop())
                    self.done.record(self.stream)
            else:
                self._epoch(rates.pop())
        except BaseException as e:
            self.error = e
            raise
        finally:
            self.pending.clear()
            self.generation += 1
            self.cond.notify_all()

    def _epoch(self, lr: float) -> None:
        self.epoch.run(lr)
        if self.sources:
            with torch.no_grad():
                torch._foreach_copy_(self.targets, self.sources)


class StackedEpoch:
    """One run's view of its stack: what ``ltlib.train.train`` calls for each epoch."""

    def __init__(self, stack: _Stack, slot: int) -> None:
        self.stack, self.slot = stack, slot
        self.loss_sum = stack.epoch.loss_sums[stack.slots.index(slot)]
        self.warm_up_seconds = stack.epoch.warm_up_seconds
        others = len(stack.slots) - 1
        self.note = f", one model-stack with {others} other run{'s' * (others != 1)}" if others else ""  # added to the run's engine note

    def __call__(self, order: torch.Tensor, lr: float) -> None:
        self.stack.submit(self.slot, order, lr)


def _stack_key(cfg: Config, model: Classifier, member: Member) -> str:
    """Runs with equal keys can share a stack: same layers, data size, batch, optimiser and lr schedule."""
    layers = [(name, type(m).__name__, [tuple(p.shape) for p in m.parameters(recurse=False)]) for name, m in model.backbone.named_modules()]
    settings = [cfg.batch_size, cfg.lr, cfg.epochs, cfg.warmup_epochs, cfg.milestones(), cfg.lr_gamma, cfg.cosine]
    settings += [cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.bf16, cfg.compile, cfg.channels_last, cfg.device]
    # Runs mix only with runs of the same mixing: a member's batch size is its mixer's, and a plain run
    # stacked beside a Mixup run drifted from itself trained alone (5.6e-5 of the first epoch's loss on
    # the CPU, cause not found), while runs of one mixing match their runs alone.
    settings += [cfg.mixing, json.dumps(cfg.mixing_params, sort_keys=True)]
    return json.dumps([layers, list(member.x_train.shape), str(member.x_train.device), settings])


class Stacker:
    """Gathers the graph-engine runs of a sweep as they set up, then builds their stacks at once.

    Every run takes a seat; a run whose engine is the graph joins with its model and
    :class:`~ltlib.fast.Member`, the others withdraw. When all seats are taken, the last run to
    arrive groups the joined runs by :func:`_stack_key` into stacks of at most ``max_size`` (a run
    alone gets a graph epoch of its own) and captures their graphs while the others wait.
    """

    def __init__(self, runs: int, max_size: int = MAX_STACK) -> None:
        self.cond = threading.Condition()
        self.open, self.max_size = set(range(runs)), max_size
        self.joined: dict[int, tuple[Classifier, Member, Config, bool]] = {}
        self.epochs: dict[int, StackedEpoch] = {}
        self.error: BaseException | None = None

    def join(self, slot: int, model: Classifier, member: Member, cfg: Config, use_bf16: bool) -> StackedEpoch:
        with self.cond:
            self.joined[slot] = (model, member, cfg, use_bf16)
            self._take(slot)
            while slot not in self.epochs and self.error is None:
                self.cond.wait()
            if self.error is not None:
                raise RuntimeError(f"setting up the model-stacks failed: {self.error}") from self.error
            return self.epochs[slot]

    def leave(self, slot: int) -> None:
        """Withdraw before joining, or leave the stack after training (either way the others go on)."""
        with self.cond:
            if slot in self.epochs:
                self.epochs[slot].stack.leave(slot)
            elif slot in self.open:
                self._take(slot)

    def _take(self, slot: int) -> None:
        self.open.discard(slot)
        if self.open:
            return
        try:
            self._build()
        except BaseException as e:
            self.error = e
            raise
        finally:
            self.cond.notify_all()

    def _build(self) -> None:
        groups: dict[str, list[int]] = {}
        for slot, (model, member, cfg, _) in sorted(self.joined.items()):
            groups.setdefault(_stack_key(cfg, model, member), []).append(slot)
        for slots in groups.values():
            for start in range(0, len(slots), self.max_size):
                self._build_stack(slots[start : start + self.max_size])

    def _build_stack(self, slots: list[int]) -> None:
        models, members = [self.joined[s][0] for s in slots], [self.joined[s][1] for s in slots]
        _, _, cfg, use_bf16 = self.joined[slots[0]]
        if len(slots) > 1 and stack_reason(models[0].backbone) is not None:
            for s in slots:  # each its own graph epoch
                self._build_stack([s])
            return
        device = members[0].y_train.device
        backbone = models[0].backbone
        if len(slots) > 1:
            backbone = stack_backbones([m.backbone for m in models])
            if members[0].inputs.channels_last:
                backbone = backbone.to(memory_format=torch.channels_last)
            if cfg.compile and device.type == "cuda":
                backbone.compile(dynamic=False)
        epoch = GraphEpoch(backbone, members, cfg.batch_size, cfg, use_bf16, capture=device.type == "cuda")
        stack = _Stack(epoch, slots, models, device)
        for s in slots:
            self.epochs[s] = StackedEpoch(stack, s)


@dataclass
class Seat:
    """A run's place at a :class:`Stacker`: its ``join`` is the run's ``train(graph_epoch_factory=...)``."""

    stacker: Stacker
    slot: int

    def join(self, model: Classifier, member: Member, cfg: Config, use_bf16: bool) -> StackedEpoch:
        return self.stacker.join(self.slot, model, member, cfg, use_bf16)

    def leave(self) -> None:
        self.stacker.leave(self.slot)


def train_many(
    configs: Iterable[Config],
    callbacks: Iterable[Callable[[int, Event], None]] = (),
    cancel: threading.Event | None = None,
    save: bool = True,
    root: str | None = None,
    concurrent: bool | None = None,
    stack: bool = True,
) -> list[Result]:
    """Train every config (concurrently on a GPU) and return their results in order.

    ``callbacks`` receive ``(index of the config, event)``. All configs are validated, and checked
    against their data, before any training starts, so a bad one fails fast and leaves no run folder. ``concurrent`` (default: only
    when a run is on a GPU) trains in threads; concurrent graph-engine runs then train in model-stacks
    unless ``stack`` is False (each its own graph on its own stream).
    """
    configs = list(configs)
    if not configs:
        raise ValueError("train_many needs at least one config")
    for cfg in configs:
        cfg.validate()
    callbacks = list(callbacks)
    data = _datasets(configs)
    for cfg in configs:  # the checks that need the data (e.g. an imbalance that empties a class), also before any training
        prepare_data(with_validation_split(cfg)[0], data[_dataset_key(cfg)])

    if concurrent is None:
        concurrent = any(resolve_device(c.device).type == "cuda" for c in configs)
    if concurrent and len({c.deterministic for c in configs}) > 1:  # the flags are process-wide (ltlib.determinism)
        raise ValueError("concurrent runs must agree on deterministic; sweep the deterministic and the other runs separately")
    # Concurrent runs start training together, once every run has set up (and captured its graph):
    # a capture must not overlap another run's training kernels.
    ready = threading.Barrier(len(configs) if concurrent else 1)
    stacker = Stacker(len(configs)) if concurrent and stack else None

    def run(i: int) -> Result:
        cfg = configs[i]
        ds = data[_dataset_key(cfg)]

        def sink(e: Event) -> None:
            if e.kind == "start":
                ready.wait()
            for cb in callbacks:
                cb(i, e)

        seat = Seat(stacker, i) if stacker is not None else None
        try:
            device = resolve_device(cfg.device)
            factory = None
            if seat is not None and choose_engine(cfg, device)[0] == "graph" and stackable(cfg):
                factory = seat.join
            elif seat is not None:
                seat.leave()  # an eager run, or one that needs fresh runners: the stacks need not wait for it
            if device.type != "cuda":
                return train(cfg, [sink], cancel, ds, save, root, factory)
            with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
                return train(cfg, [sink], cancel, ds, save, root, factory)
        except BaseException:
            ready.abort()  # the other runs stop waiting for this one
            raise
        finally:
            if seat is not None:
                seat.leave()

    if not concurrent:
        return [run(i) for i in range(len(configs))]
    with ThreadPoolExecutor(max_workers=len(configs)) as pool:
        return list(pool.map(run, range(len(configs))))
