"""AutoBalance (Li et al., NeurIPS 2021): a parametric logit-adjusted loss whose per-class parameters are
tuned by a bilevel step on a validation split carved from the training set.

Lower level: the network minimises ℓ(w; Δ, ι, ω) on the training split. Upper level: Δ, ι (and ω) follow
the hypergradient of the class-balanced validation loss, obtained with the implicit function theorem:

    dL_val/dλ = −(∂²L_train/∂λ∂w) · H⁻¹ · ∇_w L_val,    H = ∇²_w L_train,

with H⁻¹v approximated by a Neumann series α Σ_{i=0..K} (I − αH)^i v (Hessian–vector products only).
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ltlib.losses import EAGER_INPUTS, LOSSES, NON_NEGATIVE, POSITIVE, Loss
from ltlib.registry import Interval


def neumann_inverse_hvp(
    grads: list[torch.Tensor], params: list[torch.Tensor], v: list[torch.Tensor], terms: int, lr: float
) -> list[torch.Tensor]:
    """α Σ_{i=0..K} (I − αH)^i v ≈ H⁻¹v, where ``grads`` = ∇_w L (built with ``create_graph=True``) gives H by autograd."""
    term = [t.detach() for t in v]
    total = list(term)
    for _ in range(terms):
        hv = torch.autograd.grad(grads, params, grad_outputs=term, retain_graph=True)
        term = [t - lr * h for t, h in zip(term, hv)]
        total = [s + t for s, t in zip(total, term)]
    return [lr * s for s in total]


def _sum(values: list[torch.Tensor]) -> torch.Tensor:
    """v_1 + v_2 + … in order (what ``sum`` adds up, without its start value 0, so typed as a tensor)."""
    return functools.reduce(operator.add, values)


def top_hessian_eigenvalue(grads: list[torch.Tensor], params: list[torch.Tensor], start: list[torch.Tensor], iters: int = 5) -> float:
    """|λ_max| of H = ∂grads/∂params by power iteration on Hessian–vector products, from direction ``start``."""
    v = [t.detach() for t in start]
    value = 0.0
    for _ in range(iters):
        norm = torch.sqrt(_sum([(t * t).sum() for t in v])).clamp_min(1e-12)
        hv = torch.autograd.grad(grads, params, grad_outputs=[t / norm for t in v], retain_graph=True)
        value = float(torch.sqrt(_sum([(h * h).sum() for h in hv])))
        v = list(hv)
    return value


def implicit_hypergradient(
    train_grads: list[torch.Tensor],
    params: list[torch.Tensor],
    hyper: list[torch.Tensor],
    val_grads: list[torch.Tensor],
    terms: int,
    lr: float,
) -> list[torch.Tensor]:
    """dL_val/dλ = −(∂/∂λ ∇_w L_train)ᵀ H⁻¹ ∇_w L_val (the validation loss has no direct dependence on λ)."""
    p = neumann_inverse_hvp(train_grads, params, val_grads, terms, lr)
    mixed = torch.autograd.grad(train_grads, hyper, grad_outputs=p, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(h) if g is None else -g for g, h in zip(mixed, hyper)]


@LOSSES.register(
    "autobalance",
    paper="Li, Zhang, Thrampoulidis, Chen & Oymak, AutoBalance: Optimized Loss Functions for Imbalanced Data, NeurIPS 2021",
    traits=("epoch hook", "validation split"),
    constraints={
        "up_lr": NON_NEGATIVE,
        "start_epoch": Interval(0, None),
        "iter_interval": Interval(1, None),
        "train_batches": Interval(1, None),
        "val_batches": Interval(1, None),
        "neumann_terms": Interval(0, None),
        "neumann_lr": POSITIVE,
    },
    eager=EAGER_INPUTS,
)
class AutoBalance(Loss):
    """Logit-adjusted CE ℓ = −ω_y·log softmax(σ(Δ)⊙z + ι)_y whose Δ, ι, ω are learned by a bilevel step on validation data.

    Formula (official ``loss_adjust_cross_entropy``): multiplicative adjustment σ(Δ_c) (a CDT-style
    temperature), additive ι_c (an LA-style offset), class weights ω_c with the batch mean Σω_yℓ/Σω_y.
    Initialisation as the official CIFAR configs: Δ = 1 (σ(Δ) ≈ 0.73), ι = 0, ω = 1; Δ and ι are learned,
    ω only with ``learn_weights``. The upper loss is the class-balanced CE of the plain logits on the
    validation split (weights ∝ 1/n_c^val). Test-time predictions use the plain logits.

    Upper step (the paper's implicit approximation): averaged ∇_w L_train over ``train_batches`` = 10
    training batches and ∇_w L_val over ``val_batches`` = 10 validation batches, ``neumann_terms`` = 5
    Neumann terms with α = ``neumann_lr`` = 1 (capped here at 1/λ_max(H), estimated by 5 steps of power
    iteration, so that the series converges; the official code keeps α = 1), then momentum SGD (0.9,
    weight decay 1e-4) on Δ, ι, ω with ``up_lr`` = 0.01, warmed up linearly over epochs/30 epochs (10 of
    300) and decayed with the model's learning rate. Updates start at ``start_epoch`` (default
    0.4·epochs, 120 of 300).

    Differences from the official code: its upper steps are interleaved every ``iter_interval`` = 30
    training iterations; here the same number of steps per epoch, ⌈steps/iter_interval⌉, is taken
    at the start of each epoch (methods get per-epoch hooks). With ``Config.val_fraction`` = 0 the run
    holds out 20 % of the long-tailed training set (the official CIFAR split: 4000 train / 1000 val).
    Per-epoch values σ(Δ), ι, ω go to the run log as ``autobalance``.
    """

    default_val_fraction = 0.2
    # Buffers: the per-class parameters Δ (dy), ι (ly), ω (wy) and their momentum.
    dy: torch.Tensor
    ly: torch.Tensor
    wy: torch.Tensor
    dy_momentum: torch.Tensor
    ly_momentum: torch.Tensor
    wy_momentum: torch.Tensor

    def __init__(
        self,
        class_counts: np.ndarray | list[int],
        up_lr: float = 0.01,
        start_epoch: int | None = None,
        iter_interval: int = 30,
        train_batches: int = 10,
        val_batches: int = 10,
        neumann_terms: int = 5,
        neumann_lr: float = 1.0,
        learn_scale: bool = True,
        learn_shift: bool = True,
        learn_weights: bool = False,
    ) -> None:
        super().__init__(class_counts)
        self.learned = [n for n, on in (("dy", learn_scale), ("ly", learn_shift), ("wy", learn_weights)) if on]
        if not self.learned:
            raise ValueError("learn_scale, learn_shift and learn_weights are all False; allowed: at least one True")
        c = len(self.class_counts)
        self.register_buffer("dy", torch.ones(c))
        self.register_buffer("ly", torch.zeros(c))
        self.register_buffer("wy", torch.ones(c))
        for name in ("dy", "ly", "wy"):
            self.register_buffer(f"{name}_momentum", torch.zeros(c))
        self.up_lr, self.start_epoch, self.iter_interval = up_lr, start_epoch, iter_interval
        self.train_batches, self.val_batches = train_batches, val_batches
        self.neumann_terms, self.neumann_lr = neumann_terms, neumann_lr

    def adjusted_loss(
        self, logits: torch.Tensor, targets: torch.Tensor, dy: torch.Tensor, ly: torch.Tensor, wy: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample ω_y·CE(σ(Δ)⊙z + ι, y) / mean_batch(ω_y), so the batch mean is Σω_yℓ/Σω_y."""
        ce = F.cross_entropy(logits * torch.sigmoid(dy) + ly, targets, reduction="none")
        w = wy[targets]
        return w / w.mean() * ce

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.adjusted_loss(logits, targets, self.dy, self.ly, self.wy)

    def on_epoch_start(self, epoch: int, state: Any) -> None:
        cfg = state.cfg
        start = int(0.4 * cfg.epochs) if self.start_epoch is None else self.start_epoch
        if epoch >= start and state.data.y_val is not None and len(state.data.y_val) > 0:
            warmup = max(1, round(cfg.epochs / 30))
            lr = self.up_lr * min(1.0, (epoch - start + 1) / warmup) * state.optimizer.param_groups[0]["lr"] / cfg.lr
            steps = math.ceil(len(state.data.y_train) / cfg.batch_size)
            for _ in range(math.ceil(steps / self.iter_interval)):
                self.hyper_step(state, lr)
        state.log["autobalance"] = {
            "scale": torch.sigmoid(self.dy).tolist(),
            "shift": self.ly.tolist(),
            "weight": self.wy.tolist(),
        }

    def hyper_step(self, state: Any, lr: float) -> None:
        """One upper-level update of the learned per-class parameters (momentum SGD on the hypergradient)."""
        model, data, inputs, gen = state.model, state.data, state.inputs, state.generator
        params = [p for p in model.parameters() if p.requires_grad]
        hyper = {n: getattr(self, n).detach().clone().requires_grad_(n in self.learned) for n in ("dy", "ly", "wy")}
        batch = state.cfg.batch_size

        def logits_of(x: torch.Tensor) -> torch.Tensor:
            return model.head(model.features(x)).float()

        train_grads = None
        for _ in range(self.train_batches):
            idx = torch.randint(len(data.y_train), (batch,), generator=gen, device=gen.device).cpu()
            y = data.y_train[idx].to(state.device)
            values = self.adjusted_loss(logits_of(inputs(data.x_train[idx], gen)), y, hyper["dy"], hyper["ly"], hyper["wy"])
            cw = self.class_weight[y]  # the lower objective as trained, DRW weights included
            loss = (cw * values).sum() / cw.sum()
            batch_grads = torch.autograd.grad(loss, params, create_graph=True)
            train_grads = list(batch_grads) if train_grads is None else [a + b for a, b in zip(train_grads, batch_grads)]
        assert train_grads is not None, "train_batches >= 1"
        train_grads = [g / self.train_batches for g in train_grads]

        # Class-balanced validation loss of the plain logits (official: CE weighted by 1/n_c^val).
        n_val = torch.bincount(data.y_val, minlength=len(self.class_counts)).float().clamp_min(1.0).to(state.device)
        val_grads = [torch.zeros_like(p) for p in params]
        for _ in range(self.val_batches):
            idx = torch.randint(len(data.y_val), (min(batch, len(data.y_val)),), generator=gen, device=gen.device).cpu()
            y = data.y_val[idx].to(state.device)
            loss = F.cross_entropy(logits_of(inputs(data.x_val[idx])), y, weight=1.0 / n_val)
            val_grads = [a + b / self.val_batches for a, b in zip(val_grads, torch.autograd.grad(loss, params))]

        # The Neumann series converges only for α < 2/λ_max(H); cap α at 1/λ_max (the official α = 1 diverges on small MLPs).
        alpha = min(self.neumann_lr, 1.0 / max(top_hessian_eigenvalue(train_grads, params, val_grads), 1e-12))
        learned = [hyper[n] for n in self.learned]
        grads = implicit_hypergradient(train_grads, params, learned, val_grads, self.neumann_terms, alpha)
        with torch.no_grad():
            for name, g in zip(self.learned, grads):
                value, momentum = getattr(self, name), getattr(self, f"{name}_momentum")
                momentum.mul_(0.9).add_(g + 1e-4 * value)
                value.sub_(lr * momentum)
