"""The fast path: a whole epoch of training steps (gather, augment, forward, loss, backward, SGD) as one CUDA graph.

Small-image training is launch-bound: a ResNet-32 step on 128 CIFAR images issues a few hundred
tiny kernels, and the Python that launches them costs more than the GPU work. Capturing an epoch's
steps once and replaying them removes that cost. The steps read their batch indices and the
learning rate from fixed device buffers, so nothing is copied to or from the host inside an epoch.

The same :class:`GraphEpoch` runs uncaptured on any device (``capture=False``); the CPU tests compare
it step by step with the eager loop in :mod:`ltlib.train`, which stays the reference.
"""

from __future__ import annotations

import threading

import torch

from ltlib import samplers
from ltlib.losses import Loss

# One capture at a time per process: cuDNN fails inside a capture while another thread warms up or
# captures its own graph (seen with ltlib.sweep on an H100).
_CAPTURE_LOCK = threading.Lock()


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
    from ltlib.models import NORMS
    from ltlib.schedules import SCHEDULES

    why = getattr(NORMS.get(cfg.norm).obj, "not_graph_capturable", None)
    if why:
        return f"norm {cfg.norm!r} {why}"

    if getattr(SCHEDULES.get(cfg.schedule).obj, "changes_model", False):
        return f"schedule {cfg.schedule!r} changes the trained parameters mid-run; the graph is captured once"
    return None


class GraphEpoch:
    """One epoch of training steps over an index order, replayed as a single CUDA graph.

    Each step takes its batch as a fixed slice of the device buffer ``order`` (the full batches and
    the epoch's last, smaller one), so an epoch is one launch with no host work between steps.

    SGD (momentum, weight decay, optional Nesterov) is written with foreach ops and a learning-rate
    tensor so the update lives inside the graph; it computes what ``torch.optim.SGD`` computes (its
    momentum buffer starts at the first gradient, as zeros + g does here).
    """

    def __init__(self, model, loss_fn, inputs, x_train, y_train, batch_size, generator, cfg, use_bf16, capture: bool = True) -> None:
        from ltlib.train import batch_loss  # the same forward + loss as the eager loop

        self.batch_loss = batch_loss
        self.model, self.loss_fn, self.inputs = model, loss_fn, inputs
        self.x_train, self.y_train, self.generator = x_train, y_train, generator
        self.use_bf16 = use_bf16
        n, dev = len(y_train), y_train.device
        self.order = torch.zeros(n, dtype=torch.long, device=dev)
        self.slices = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
        self.lr = torch.tensor(cfg.lr, device=dev)
        self.loss_sum = torch.zeros((), device=dev)
        self.momentum, self.weight_decay, self.nesterov = cfg.momentum, cfg.weight_decay, cfg.nesterov
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = [torch.zeros_like(p) for p in self.params]
        self.graph: torch.cuda.CUDAGraph | None = None
        if capture:
            self._capture()

    def _step(self, start: int, stop: int) -> None:
        idx = self.order[start:stop]
        x = self.inputs(self.x_train[idx], self.generator)
        loss = self.batch_loss(self.model, self.loss_fn, x, self.y_train[idx], None, None, self.use_bf16)
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            if self.weight_decay:
                grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
            torch._foreach_mul_(self.buffers, self.momentum)
            torch._foreach_add_(self.buffers, grads)
            direction = torch._foreach_add(grads, self.buffers, alpha=self.momentum) if self.nesterov else self.buffers
            torch._foreach_sub_(self.params, torch._foreach_mul(direction, self.lr))
            self.loss_sum.add_(loss.detach())

    def _epoch(self) -> None:
        for start, stop in self.slices:
            self._step(start, stop)

    def _capture(self) -> None:
        with _CAPTURE_LOCK:
            self._warm_up_and_capture()

    def _warm_up_and_capture(self) -> None:
        # Warm up each batch shape on a side stream (cuDNN picks algorithms, Inductor compiles,
        # autograd builds its caches), capture the epoch, then undo the warm-up's effect on the
        # weights, the momentum buffers and the BN statistics.
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.order.copy_(torch.randperm(len(self.order), device=self.order.device))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step(*self.slices[0])
                self._step(*self.slices[-1])
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.graph.register_generator_state(self.generator)
        # thread_local: other runs (ltlib.sweep) may launch small set-up work on their own streams meanwhile.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self._epoch()
        with torch.no_grad():
            self.model.load_state_dict(state)
            for b in self.buffers:
                b.zero_()
        self.loss_sum.zero_()

    def __call__(self, order: torch.Tensor, lr: float) -> None:
        """Train one epoch over ``order`` (a device tensor of training indices) at learning rate ``lr``."""
        self.order.copy_(order, non_blocking=True)
        self.lr.fill_(lr)
        if self.graph is None:
            self._epoch()
        else:
            self.graph.replay()
