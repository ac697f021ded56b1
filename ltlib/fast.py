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

import numpy as np
import torch

from ltlib.config import Config
from ltlib.inputs import Inputs, predict
from ltlib.losses import Loss, batch_objective
from ltlib.mixing import MixContext, Mixing
from ltlib.models import Classifier, Conv2d
from ltlib.stack import stack_channels

# One capture at a time per process: cuDNN fails inside a capture while another thread warms up or
# captures its own graph (seen with ltlib.sweep on an H100).
_CAPTURE_LOCK = threading.Lock()
# Weight gradients on a side stream (models.Conv2d); benchmarks/gpu.py turns it off to measure the gain.
SIDE_STREAM_WEIGHT_GRADS = True
# Training steps captured in one CUDA graph (replayed over the epoch); benchmarks/gpu.py varies it.
STEPS_PER_GRAPH = 4
# A list of tensors as torch's foreach ops take and return it.
TensorList = list[torch.Tensor] | tuple[torch.Tensor, ...]


@dataclass
class Member:
    """One run's share of a :class:`GraphEpoch`: its data, augmentation generator, head, loss and
    the per-step parts of its method (mixing, domains, SAM's second pass)."""

    loss_fn: Loss
    head: torch.nn.Module
    inputs: Inputs  # uint8 images → normalised, augmented float batches
    x_train: torch.Tensor
    y_train: torch.Tensor
    generator: torch.Generator
    domains: torch.Tensor | None = None  # per-image domain ids (multi-domain data)
    mixer: Mixing | None = None  # None: batches are used as drawn
    context: MixContext | None = None  # the mixer's context; the runner keeps its epoch current
    sharpness: float = 0.0  # SAM's ρ while SAM is on (a second forward-backward pass per step), else 0
    # The run's torch optimiser: a graph epoch of one run keeps its momentum buffers in the optimiser's
    # state, so a fresh runner (after a hook asked for one) goes on with them, and a two-stage
    # schedule that clears the optimiser's state starts stage 2 afresh, as on the eager loop.
    optimizer: torch.optim.Optimizer | None = None
    # The optimiser's own batch objective from per-sample losses (ABSGD's attention); None: the mean.
    reduce: torch.nn.Module | None = None


@dataclass
class Batch:
    """One member's training batch after augmentation and mixing."""

    x: torch.Tensor
    y: torch.Tensor
    y_b: torch.Tensor | None = None
    lam: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    domains: torch.Tensor | None = None


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
        self, backbone: torch.nn.Module, members: list[Member], batch_size: int, cfg: Config, use_bf16: bool, capture: bool = True
    ) -> None:
        self.backbone, self.members = backbone, members
        # Everything the step trains (a loss may own layers: ResCom's projection head), and whose
        # state (weights, BN statistics, a loss's running buffers) the warm-up must leave as it found it.
        self.network = torch.nn.ModuleList(
            [backbone, *(m.head for m in members), *(m.loss_fn for m in members), *(m.reduce for m in members if m.reduce is not None)]
        )
        sharpness = {m.sharpness for m in members}
        if len(sharpness) > 1 or (len(members) > 1 and sharpness != {0.0}):
            raise ValueError("SAM's second pass needs a graph epoch of its own: its ρ·g/‖g‖ is one norm over one model")
        self.sharpness = sharpness.pop()
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
        self.params: list[torch.Tensor] = [p for p in self.network.parameters() if p.requires_grad]
        self.buffers = self._momentum_buffers(members[0].optimizer if len(members) == 1 else None)
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

    note = ""  # a run alone: nothing to add to its engine note

    def _momentum_buffers(self, optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
        """SGD's momentum buffers: in ``optimizer``'s state (torch's key, created as zeros: zeros·μ + g
        is the g that torch starts a buffer with), or the graph's own for a model-stack."""
        if optimizer is None:
            return [torch.zeros_like(p) for p in self.params]
        for p in self.params:
            if optimizer.state[p].get("momentum_buffer") is None:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return [optimizer.state[p]["momentum_buffer"] for p in self.params]

    @property
    def loss_sum(self) -> torch.Tensor:
        """The first member's summed loss of the epoch (a view, zeroed when an epoch starts)."""
        return self.loss_sums[0]

    def _batch(self, m: Member, order: torch.Tensor, size: int) -> Batch:
        """Member ``m``'s next batch: the indices at the device-side offset, augmentation, then its mixing."""
        idx = order[self.offset + self.positions[size]]
        x, y = m.inputs(m.x_train[idx], m.generator), m.y_train[idx]
        domains = None if m.domains is None else m.domains[idx]
        if m.mixer is None:
            return Batch(x, y, domains=domains)
        assert m.context is not None, "a member with a mixer carries its context"
        m.context.domains = domains
        x, y_a, y_b, lam = m.mixer(x, y, m.context)
        return Batch(x, y_a, y_b, lam, m.mixer.batch_weight, domains)

    def _losses(self, batches: list[Batch]) -> list[torch.Tensor]:
        """Each member's loss on its batch: the forward pass and loss of ``ltlib.train.batch_loss``."""
        xs = [b.x for b in batches]
        # No autocast weight cache: it would hold tensors across CUDA-graph replays.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_bf16, cache_enabled=False):
            feats = self.backbone(xs[0] if len(xs) == 1 else stack_channels(xs))
            parts = feats.unflatten(1, (len(xs), -1)).unbind(1) if len(xs) > 1 else (feats,)
            logits = [m.head(f) for m, f in zip(self.members, parts)]
        return [
            batch_objective(m.loss_fn, z, b.y, b.y_b, b.lam, features=f.float(), domains=b.domains, weight=b.weight, reduce=m.reduce)
            for m, b, z, f in zip(self.members, batches, logits, parts)
        ]

    def _gradients(self, batches: list[Batch]) -> tuple[torch.Tensor, TensorList]:
        losses = torch.stack(self._losses(batches))
        grads = list(torch.autograd.grad(losses.sum(), self.params))
        if self.grad_stream is not None:
            torch.cuda.current_stream().wait_stream(self.grad_stream)
        return losses, grads

    def _step(self, size: int) -> None:
        batches = [self._batch(m, order, size) for m, order in zip(self.members, self.orders)]
        self.offset.add_(size)
        losses, grads = self._gradients(batches)
        if self.sharpness:  # SAM (ltlib.optim.SAM): the gradient at w + ε, ε = ρ·g/‖g‖, on the same batch
            with torch.no_grad():
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                eps = torch._foreach_mul(grads, self.sharpness / (norm + 1e-12))
                torch._foreach_add_(self.params, eps)
                self._refresh_low_precision()
            _, grads = self._gradients(batches)
            with torch.no_grad():
                torch._foreach_sub_(self.params, eps)
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
        momentum = [b.clone() for b in self.buffers]
        # While capturing: weight gradients on the side stream, bf16 weight copies, and no BN batch
        # counter (31 tiny kernels a step; with a fixed momentum nothing reads it).
        norms = [m for m in self.network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.momentum is not None]
        counters = [m.num_batches_tracked for m in norms]
        with _CAPTURE_LOCK:
            try:
                low_precision: list[torch.Tensor | None] = [*self.weights_lp] if self.weights_lp else [None] * len(self.convs)
                for m, lp in zip(self.convs, low_precision):
                    m.grad_stream, m.weight_lp = self.grad_stream, lp
                for norm in norms:
                    norm.num_batches_tracked = None
                self._refresh_low_precision()
                self._warm_up_and_capture()
            finally:  # the graphs hold the kernels; the model itself goes back to plain layers
                for m in self.convs:
                    m.grad_stream, m.weight_lp = None, None
                for norm, counter in zip(norms, counters):
                    norm.num_batches_tracked = counter
        with torch.no_grad():
            self.network.load_state_dict(state)
            torch._foreach_copy_(self.buffers, momentum)
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
        self.loss_sums.zero_()
        self.lr.fill_(lr)
        self.offset.zero_()
        if not self.graphs:
            for size in self.chunk * self.chunks + self.rest:
                self._step(size)
        for graph, replays in self.graphs:
            for _ in range(replays):
                graph.replay()


def graph_epoch(model: Classifier, member: Member, cfg: Config, use_bf16: bool) -> GraphEpoch:
    """A graph epoch of one run alone (captured on a GPU, uncaptured elsewhere)."""
    return GraphEpoch(model.backbone, [member], cfg.batch_size, cfg, use_bf16, capture=member.y_train.device.type == "cuda")


class BackgroundEvaluation:
    """Test passes on their own CUDA stream, beside the next epoch's training.

    At an evaluated epoch the weights are copied into a shadow model (one foreach copy, ordered after
    the epoch on the training stream); the shadow's forward pass and the copy of its outputs to
    pinned host memory then run on a side stream while the GPU trains the next epoch, which the
    training step alone leaves partly idle. Made before ``torch.compile``: the shadow runs eagerly.
    """

    def __init__(self, model: Classifier, inputs: Inputs, x_test: torch.Tensor) -> None:
        self.shadow = copy.deepcopy(model)
        self.sources = list(model.state_dict(keep_vars=True).values())
        self.targets = list(self.shadow.state_dict(keep_vars=True).values())
        self.inputs, self.x = inputs, x_test.to(inputs.device)
        self.stream = torch.cuda.Stream(inputs.device)
        self.done = torch.cuda.Event()
        self.host: list[torch.Tensor] = []

    def start(self) -> None:
        """Snapshot the model as it is at the end of the epoch just launched, and start its test pass."""
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
