"""Optimisers, registered by name. Every optimiser is stepped with a closure
(``optimizer.step(closure)``), so methods that need a second forward–backward pass (SAM) fit
the same loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ltlib.registry import Check, Interval, Registry

if TYPE_CHECKING:
    from ltlib.state import TrainState

OPTIMIZERS = Registry("optimizer", fixed=("params", "lr", "momentum", "weight_decay", "nesterov"))


def available() -> list[str]:
    return OPTIMIZERS.available()


def build(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float, nesterov: bool, **kw: Any
) -> torch.optim.Optimizer:
    return OPTIMIZERS.build(name, params, lr, momentum, weight_decay, nesterov, **kw)


@OPTIMIZERS.register("sgd", paper="SGD with momentum (Sutskever et al., ICML 2013), as in every long-tail recipe")
def sgd(params: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float, nesterov: bool) -> torch.optim.Optimizer:
    """SGD with momentum and L2 weight decay."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def _start_epoch(start_epoch: int | None, fraction: float, epochs: int) -> int:
    """The epoch a deferred method switches on: ``start_epoch`` or ``fraction`` of the run (as DRW does)."""
    return int(fraction * epochs) if start_epoch is None else start_epoch


@OPTIMIZERS.register(
    "sam",
    paper="Foret, Kleiner, Mobahi & Neyshabur, Sharpness-Aware Minimization, ICLR 2021; for long tail: "
    "Rangwani, Aithal, Mishra & Babu, Escaping Saddle Points for Effective Generalization on Class-Imbalanced Data, NeurIPS 2022",
    traits=("epoch hook", "second pass", "changes step"),
    constraints={"rho": Interval(0, None), "start_epoch": Interval(0, None)},
)
class SAM(torch.optim.SGD):
    """Sharpness-aware minimisation: SGD with the gradient taken at the worst point w + ρ·g/‖g‖ nearby.

    Each step: g = ∇L(w); ε = ρ·g/‖g‖₂ (one norm over all parameters); the descent direction is
    ∇L(w + ε), applied to w by momentum SGD with weight decay (decay and momentum act at w, as in the
    official code, whose base optimiser is torch SGD). Rangwani et al. show that SAM lets minority
    classes escape saddle points, and pair it with LDAM-DRW / CE-DRW.

    Defaults: ρ = 0.05 (Foret et al. and the argparse default of the official Saddle-LongTail code); its
    CIFAR-10-LT runs use ρ = 0.1 (CE), 0.5 (CE-DRW), 0.8 (LDAM-DRW), CIFAR-100-LT 0.2 / 0.8 / 0.8, with
    ρ constant from epoch 0 (``--rho_schedule none``). ``start_epoch`` defers SAM (plain SGD before it),
    a DRW-style delay; the official ImageNet/iNat runs instead step ρ up (0.05 → 0.1 → 0.5). Each SAM
    step costs two forward–backward passes; the second pass also updates BatchNorm statistics, as in
    the official code (no BN bypass).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        momentum: float,
        weight_decay: float,
        nesterov: bool,
        rho: float = 0.05,
        start_epoch: int = 0,
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        self.rho, self.start_epoch = rho, start_epoch
        self.active = start_epoch == 0

    def on_epoch_start(self, epoch: int, state: TrainState) -> None:
        active = epoch >= self.start_epoch
        if active != self.active:
            state.rebuild = True  # the step gains (or loses) its second pass
        self.active = active

    # torch types step's closure (and result) as float; SAM's closure returns the loss tensor, and so does step.
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        """One SAM step; ``closure`` zeroes the gradients, computes the loss and back-propagates."""
        if closure is None:
            raise ValueError("closure=None is not allowed: SAM needs a closure to evaluate the loss twice")
        with torch.enable_grad():
            loss = closure()
        if self.active and self.rho > 0:
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            eps = torch._foreach_mul([p.grad for p in params], self.rho / (norm + 1e-12))
            torch._foreach_add_(params, eps)  # climb to w + ε
            with torch.enable_grad():
                closure()  # gradients at w + ε
            torch._foreach_sub_(params, eps)  # back to w; the SGD step below uses ∇L(w + ε)
        super().step()
        return loss


class BatchReducer(Protocol):
    """An optimiser with the "reduces batch" trait: it turns the per-sample losses into the batch objective itself."""

    @property
    def objective(self) -> torch.nn.Module | None:
        """The batch objective from per-sample losses, or None for their mean."""
        ...


@OPTIMIZERS.register(
    "absgd",
    paper="Qi, Xu, Jin, Yin & Yang, Attentional-Biased Stochastic Gradient Descent, TMLR 2023",
    traits=("epoch hook", "reduces batch", "changes step"),
    constraints={
        "lam": Check(lambda v: v != 0, "non-zero (> 0 for imbalance, < 0 for label noise)"),
        "gamma": Interval(0, 1, closed="right"),
        "alpha": Interval(0, None, closed="neither"),
        "start_epoch": Interval(0, None),
    },
)
class ABSGD(torch.optim.SGD):
    """Attentional-biased SGD: momentum SGD on Σ p_i ℓ_i with p_i ∝ exp(ℓ_i/λ), a per-sample attention on hard samples.

    Paper: p_i = exp(ℓ_i/λ) / Σ_j exp(ℓ_j/λ) over the mini-batch (λ > 0 favours high-loss samples, for
    imbalance; λ < 0 discounts them, for label noise; |λ| → ∞ is plain SGD). The official code normalises
    with a moving average instead of the batch sum, and this is what is implemented:
    u ← (1 − γ)·u + γ·α·mean_j exp(ℓ_j/λ), p_i = exp(ℓ_i/λ) / (u·B), objective Σ_i p_i ℓ_i, with u
    starting at 0 and p detached (no gradient through the weights). Official code: github.com/qiqi-helloworld/ABSGD
    (commit a2b26f5), ``mylosses.py``, class ``ABSGD``: ``self.u = 0`` (l. 29), ``expLoss = torch.exp(loss /
    myLambda)`` (l. 47), ``self.u = (1 - self.gamma) * self.u + self.gamma * (self.robAlpha *
    torch.mean(expLoss))`` (l. 49), ``drop = expLoss/(self.u * len(loss))``, ``drop.detach_()`` (l. 50–51),
    ``torch.sum(p * loss)`` (l. 54); the same in ``wilds-competition/mylosses.py`` (l. 36–39).
    The weights sum to about 1/α once u has settled and to 1/(γα) on the first step, where u = 0 (2 and
    2.9 at the defaults); no single p_i exceeds 1/(γα).

    Numerics (the official code has none): exp(ℓ/λ) overflows float32 once some ℓ_i > 88.7·λ (443 at
    λ = 5); u is then inf and p = inf/inf = NaN, which ends the run. Here u is kept as log u and updated
    with log-sum-exp, log u ← logaddexp(log(1 − γ) + log u, log(γα) + logmeanexp(ℓ/λ)), and
    p_i = exp(ℓ_i/λ − log u)/B: the same p_i, whose exponent is at most log(B/(γα)), so it cannot overflow.

    ℓ_i are the loss's per-sample values, already multiplied by class weights (DRW), as the official code
    feeds its class-weighted CE. Defaults from the official README's CIFAR-10-LT command: λ = 5, γ = 0.7,
    α = 0.5, and λ switches on at epoch 160 of 200 (``--lamda_shots``; before it λ = 200, which the code
    treats as the plain batch mean): ``start_epoch`` = 0.8·epochs by default.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        momentum: float,
        weight_decay: float,
        nesterov: bool,
        lam: float = 5.0,
        gamma: float = 0.7,
        alpha: float = 0.5,
        start_epoch: int | None = None,
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        self.start_epoch = start_epoch
        self.active = start_epoch == 0
        self.attention = BatchAttention(lam, gamma, alpha)

    @property
    def u(self) -> float:
        """The official code's moving average u, for inspection (inf where it is beyond the float range)."""
        log_u = float(self.attention.log_u)
        return math.exp(log_u) if log_u < 709.0 else math.inf

    def on_epoch_start(self, epoch: int, state: TrainState) -> None:
        active = epoch >= _start_epoch(self.start_epoch, 0.8, state.cfg.epochs)
        if active != self.active:
            state.rebuild = True  # the step's objective changes from the batch mean to the attention
        self.active = active

    @property
    def objective(self) -> BatchAttention | None:
        """The batch objective from per-sample losses: the attention Σ p_i ℓ_i once active; None (the
        plain mean) before. Fixed between epoch hooks, so a captured step can hold it."""
        return self.attention if self.active else None


class BatchAttention(torch.nn.Module):
    """ABSGD's weighted batch objective Σ p_i ℓ_i with its moving-average normaliser kept as log u.

    A module with a buffer, so that the CUDA-graph step updates u in place on the device and its
    warm-up (which trains a few steps and then restores the network's state) restores u too.
    """

    log_u: torch.Tensor

    def __init__(self, lam: float, gamma: float, alpha: float) -> None:
        super().__init__()
        self.lam, self.gamma, self.alpha = lam, gamma, alpha
        # log u; −inf is the official u = 0 before the first step (logaddexp(−inf, x) = x).
        self.register_buffer("log_u", torch.tensor(-math.inf))
        self.log_decay = math.log(1 - gamma) if gamma < 1 else -math.inf

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if self.log_u.device != values.device:
            self.log_u = self.log_u.to(values.device)
        z = values.detach().float() / self.lam
        n = len(values)
        # log(γ·α·mean_j exp(ℓ_j/λ)), by log-sum-exp: finite for any finite ℓ.
        log_new = math.log(self.gamma * self.alpha) + torch.logsumexp(z, 0) - math.log(n)
        self.log_u.copy_(torch.logaddexp(self.log_decay + self.log_u, log_new))
        p = torch.exp(z - self.log_u) / n  # = exp(ℓ_i/λ) / (u·B); the exponent is ≤ log(B/(γα))
        return (p * values).sum()
