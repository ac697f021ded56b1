"""The fast path: training steps (gather, augment, forward, loss, backward, SGD) replayed from CUDA graphs.

Small-image training is launch-bound: a ResNet-32 step on 128 CIFAR images issues a few hundred
tiny kernels, and the Python that launches them costs more than the GPU work. Capturing a chunk of
steps once and replaying it through the epoch removes that cost. The steps read their batch indices,
their position in the epoch and the learning rate from fixed device buffers, so nothing is copied
to or from the host inside an epoch. Test passes run on a side stream beside the next epoch.
One graph epoch can also train several runs at once as a model-stack (``ltlib.stack``, used by
``ltlib.sweep``): each run is a :class:`Member` with its own data order, augmentation and loss.

The same :class:`GraphEpoch` runs uncaptured on any device (``capture=False``); the CPU tests compare
it step by step with the eager loop in :mod:`ltlib.train`, which stays the reference.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ltlib import samplers
from ltlib.losses import Loss
from ltlib.models import NORMS, Conv2d
from ltlib.stack import stack_channels

# One capture at a time per process: cuDNN fails inside a capture while another thread warms up or
# captures its own graph (seen with ltlib.sweep on an H100).
_CAPTURE_LOCK = threading.Lock()
# Weight gradients on a side stream (models.Conv2d); benchmarks/gpu.py turns it off to measure the gain.
SIDE_STREAM_WEIGHT_GRADS = True
# Training steps captured in one CUDA graph (replayed over the epoch); benchmarks/gpu.py varies it.
STEPS_PER_GRAPH = 4


def unsupported_reason(cfg, loss_fn: Loss) -> str | None:
    """Why this config cannot use the graph step (None when it can)."""
    if cfg.optimizer != "sgd":
        return f"optimizer {cfg.optimizer!r} is not captured (only plain SGD is)"
    if cfg.mixing != "none":
        return f"mixing {cfg.mixing!r} runs eagerly (its random pairing is drawn outside the graph)"
    if samplers.learns(cfg.sampler):
        return f"sampler {cfg.sampler!r} learns between epochs with its own forward and backward passes (eager only)"
    if loss_fn.needs_features or loss_fn.needs_domains or hasattr(loss_fn, "on_epoch_start"):
        return f"loss {cfg.loss!r} needs per-step inputs or hooks the graph does not capture"
    if any(True for _ in loss_fn.parameters()):
        return f"loss {cfg.loss!r} has trainable layers; the graph step updates only the model's parameters"
    from ltlib.schedules import SCHEDULES

    why = getattr(NORMS.get(cfg.norm).obj, "not_graph_capturable", None)
    if why:
        return f"norm {cfg.norm!r} {why}"

    if getattr(SCHEDULES.get(cfg.schedule).obj, "changes_model", False):
        return f"schedule {cfg.schedule!r} changes the trained parameters mid-run; the graph is captured once"
    return None


@dataclass
class Member:
    """One run's share of a :class:`GraphEpoch`: its data, augmentation generator, head and loss."""

    loss_fn: Loss
    head: torch.nn.Module
    inputs: Any  # ltlib.train.Inputs: uint8 images → normalised, augmented float batches
    x_train: torch.Tensor
    y_train: torch.Tensor
    generator: torch.Generator


class GraphEpoch:
    """One epoch of training steps over an index order, replayed from CUDA graphs.

    Each step reads its batch from the device buffer ``order`` at a device-side offset that the step
    itself advances, so one captured chunk of ``STEPS_PER_GRAPH`` steps serves the whole epoch: an
    epoch is a few replays with no host work between them, and capture stays short (the capture
    traces each captured step in Python). The epoch's remaining steps, the last smaller batch
    included, are a second graph.

    With several ``members`` the ``backbone`` is a model-stack (``ltlib.stack``): each member draws
    its own batch from its own order, the batches go through the stack side by side, and each
    member's slice of the features goes through its own head and loss. The members' losses are
    summed for one backward pass (no parameter is shared, so each model gets its own gradient).

    SGD (momentum, weight decay, optional Nesterov) is written with foreach ops and a learning-rate
    tensor so the update lives inside the graph; it computes what ``torch.optim.SGD`` computes (its
    momentum buffer starts at the first gradient, as zeros + g does here).
    """

    def __init__(
        self, backbone: torch.nn.Module, members: list[Member], batch_size: int, cfg, use_bf16: bool, capture: bool = True
    ) -> None:
        self.backbone, self.members = backbone, members
        # Everything the step trains, and whose state the warm-up must leave as it found it.
        self.network = torch.nn.ModuleList([backbone, *(m.head for m in members)])
        self.use_bf16 = use_bf16
        sizes = {len(m.y_train) for m in members}
        if len(sizes) > 1:
            raise ValueError(f"the members of one graph epoch need training sets of one size; got sizes {sorted(sizes)}")
        n, dev = sizes.pop(), members[0].y_train.device
        self.orders = [torch.zeros(n, dtype=torch.long, device=dev) for _ in members]
        self.offset = torch.zeros((), dtype=torch.long, device=dev)
        full, tail = divmod(n, batch_size)
        k = min(STEPS_PER_GRAPH, full)
        self.chunks, rest = divmod(full, k) if k else (0, 0)
        self.chunk = [batch_size] * k  # replayed ``chunks`` times per epoch
        self.rest = [batch_size] * rest + ([tail] if tail else [])  # once per epoch
        self.positions = {size: torch.arange(size, device=dev) for size in {batch_size, tail} if size}
        self.lr = torch.tensor(cfg.lr, device=dev)
        self.loss_sums = torch.zeros(len(members), device=dev)  # per member, summed over the epoch's steps
        self.momentum, self.weight_decay, self.nesterov = cfg.momentum, cfg.weight_decay, cfg.nesterov
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        self.buffers = [torch.zeros_like(p) for p in self.params]
        self.graphs: list[tuple[torch.cuda.CUDAGraph, int]] = []  # (graph, replays per epoch)
        self.warm_up_seconds = 0.0  # cuDNN autotuning and, with torch.compile, compilation
        # In the captured graph the convolutions' weight gradients run on a side stream, beside the
        # backward chain of input gradients (models.Conv2d); the update waits for them.
        # (A model without such convolutions must not wait for a stream that has no work in the capture.)
        self.convs = [m for m in self.network.modules() if isinstance(m, Conv2d)] if capture and SIDE_STREAM_WEIGHT_GRADS else []
        self.grad_stream = torch.cuda.Stream(dev) if self.convs else None
        # ... and read bf16 copies of their weights, refreshed by the update in one foreach copy,
        # instead of casting each weight in the forward pass.
        self.weights_lp = [torch.empty_like(m.weight, dtype=torch.bfloat16) for m in self.convs] if use_bf16 else []
        if capture:
            self._capture()

    @property
    def loss_sum(self) -> torch.Tensor:
        """The first member's summed loss of the epoch (a view: zero it before the epoch)."""
        return self.loss_sums[0]

    def _losses(self, size: int) -> list[torch.Tensor]:
        """Each member's loss on its next batch: the forward pass and loss of ``ltlib.train.batch_loss``."""
        position = self.offset + self.positions[size]
        xs, ys = [], []
        for m, order in zip(self.members, self.orders):
            idx = order[position]
            xs.append(m.inputs(m.x_train[idx], m.generator))
            ys.append(m.y_train[idx])
        self.offset.add_(size)
        # No autocast weight cache: it would hold tensors across CUDA-graph replays.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_bf16, cache_enabled=False):
            feats = self.backbone(xs[0] if len(xs) == 1 else stack_channels(xs))
            parts = feats.unflatten(1, (len(xs), -1)).unbind(1) if len(xs) > 1 else (feats,)
            logits = [m.head(f) for m, f in zip(self.members, parts)]
        return [m.loss_fn(z, y) for m, z, y in zip(self.members, logits, ys)]

    def _step(self, size: int) -> None:
        losses = torch.stack(self._losses(size))
        grads = torch.autograd.grad(losses.sum(), self.params)
        if self.grad_stream is not None:
            torch.cuda.current_stream().wait_stream(self.grad_stream)
        with torch.no_grad():
            if self.weight_decay:
                grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
            torch._foreach_mul_(self.buffers, self.momentum)
            torch._foreach_add_(self.buffers, grads)
            direction = torch._foreach_add(grads, self.buffers, alpha=self.momentum) if self.nesterov else self.buffers
            torch._foreach_sub_(self.params, torch._foreach_mul(direction, self.lr))
            self._refresh_low_precision()
            self.loss_sums.add_(losses.detach())

    @torch.no_grad()
    def _refresh_low_precision(self) -> None:
        if self.weights_lp:
            torch._foreach_copy_(self.weights_lp, [m.weight for m in self.convs])

    def _capture(self) -> None:
        # Warm-up and capture train for a few steps: their effect on the weights, the momentum
        # buffers and the BN statistics is undone afterwards.
        state = {k: v.clone() for k, v in self.network.state_dict().items()}
        # While capturing: weight gradients on the side stream, bf16 weight copies, and no BN batch
        # counter (31 tiny kernels a step; with a fixed momentum nothing reads it).
        norms = [m for m in self.network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.momentum is not None]
        counters = [m.num_batches_tracked for m in norms]
        with _CAPTURE_LOCK:
            try:
                for m, lp in zip(self.convs, self.weights_lp or [None] * len(self.convs)):
                    m.grad_stream, m.weight_lp = self.grad_stream, lp
                for m in norms:
                    m.num_batches_tracked = None
                self._refresh_low_precision()
                self._warm_up_and_capture()
            finally:  # the graphs hold the kernels; the model itself goes back to plain layers
                for m in self.convs:
                    m.grad_stream, m.weight_lp = None, None
                for m, counter in zip(norms, counters):
                    m.num_batches_tracked = counter
        with torch.no_grad():
            self.network.load_state_dict(state)
            for b in self.buffers:
                b.zero_()
        self._refresh_low_precision()
        self.loss_sums.zero_()

    def _warm_up_and_capture(self) -> None:
        # Warm up each batch shape on a side stream (cuDNN picks algorithms, Inductor compiles,
        # autograd builds its caches), then capture the chunk of steps and the rest of the epoch.
        started = time.perf_counter()
        for order in self.orders:
            order.copy_(torch.randperm(len(order), device=order.device))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                for size in self.positions:
                    self.offset.zero_()
                    self._step(size)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.current_stream().synchronize()
        self.warm_up_seconds = time.perf_counter() - started
        pool = None
        for steps, replays in ((self.chunk, self.chunks), (self.rest, 1)):
            if not steps:
                continue
            graph = torch.cuda.CUDAGraph()
            for m in self.members:
                graph.register_generator_state(m.generator)
            self.offset.zero_()
            # thread_local: other runs (ltlib.sweep) may launch small set-up work on their own streams meanwhile.
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                for size in steps:
                    self._step(size)
            pool = graph.pool()  # the graphs run one after another: they can share memory
            self.graphs.append((graph, replays))

    def __call__(self, order: torch.Tensor, lr: float) -> None:
        """Train one epoch of a single member over ``order`` (a device tensor of training indices) at learning rate ``lr``."""
        self.orders[0].copy_(order, non_blocking=True)
        self.run(lr)

    def run(self, lr: float) -> None:
        """Train one epoch over the members' orders (already in ``orders``) at learning rate ``lr``."""
        self.lr.fill_(lr)
        self.offset.zero_()
        if not self.graphs:
            for size in self.chunk * self.chunks + self.rest:
                self._step(size)
        for graph, replays in self.graphs:
            for _ in range(replays):
                graph.replay()


class BackgroundEvaluation:
    """Test passes on their own CUDA stream, beside the next epoch's training.

    At an evaluated epoch the weights are copied into a shadow model (one foreach copy, ordered after
    the epoch on the training stream); the shadow's forward pass and the copy of its outputs to
    pinned host memory then run on a side stream while the GPU trains the next epoch, which the
    training step alone leaves partly idle. Made before ``torch.compile``: the shadow runs eagerly.
    """

    def __init__(self, model: torch.nn.Module, inputs, x_test: torch.Tensor) -> None:
        self.shadow = copy.deepcopy(model)
        self.sources = list(model.state_dict(keep_vars=True).values())
        self.targets = list(self.shadow.state_dict(keep_vars=True).values())
        self.inputs, self.x = inputs, x_test.to(inputs.device)
        self.stream = torch.cuda.Stream(inputs.device)
        self.done = torch.cuda.Event()
        self.host: list[torch.Tensor] = []

    def start(self) -> None:
        """Snapshot the model as it is at the end of the epoch just launched, and start its test pass."""
        from ltlib.train import predict

        with torch.no_grad():
            torch._foreach_copy_(self.targets, self.sources)
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            outputs = [*predict(self.shadow, self.inputs, self.x)]
            weight = getattr(self.shadow.head, "weight", None)  # τ-norm reads the head's weight
            outputs.append(weight.detach().float() if isinstance(weight, torch.Tensor) else torch.zeros(0, device=self.x.device))
            if not self.host:
                self.host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in outputs]
            for host, t in zip(self.host, outputs):
                host.copy_(t, non_blocking=True)
            self.done.record()

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Test logits, features and head weight (None without one) of the last started pass; waits for it."""
        self.done.synchronize()
        logits, feats, weight = (h.numpy().copy() for h in self.host)
        return logits, feats, weight if weight.size else None
