"""Optimisers, registered by name. Every optimiser is stepped with a closure
(``optimizer.step(closure)``), so methods that need a second forward–backward pass (SAM) fit
the same loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ltlib.registry import Registry, check_range

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
        check_range("rho", rho, 0.0, float("inf"))
        check_range("start_epoch", start_epoch, 0, float("inf"))
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        self.rho, self.start_epoch = rho, start_epoch
        self.active = start_epoch == 0

    def on_epoch_start(self, epoch: int, state: Any) -> None:
        self.active = epoch >= self.start_epoch

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


@OPTIMIZERS.register("absgd", paper="Qi, Xu, Jin, Yin & Yang, Attentional-Biased Stochastic Gradient Descent, TMLR 2023")
class ABSGD(torch.optim.SGD):
    """Attentional-biased SGD: momentum SGD on Σ p_i ℓ_i with p_i ∝ exp(ℓ_i/λ), a per-sample attention on hard samples.

    Paper: p_i = exp(ℓ_i/λ) / Σ_j exp(ℓ_j/λ) over the mini-batch (λ > 0 favours high-loss samples, for
    imbalance; λ < 0 discounts them, for label noise; |λ| → ∞ is plain SGD). The official code normalises with a moving average instead of the batch sum,
    u ← (1 − γ)·u + γ·α·mean_j exp(ℓ_j/λ), p_i = exp(ℓ_i/λ) / (u·B), with u starting at 0 and p
    detached (no gradient through the weights); this is what is implemented. ℓ_i are the loss's
    per-sample values, already multiplied by class weights (DRW), as the official code feeds its
    class-weighted CE. Defaults from the official README's CIFAR-10-LT command: λ = 5, γ = 0.7,
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
        if lam == 0 or not math.isfinite(lam):
            raise ValueError(f"lam={lam} is out of range; allowed: finite and non-zero (> 0 for imbalance, < 0 for label noise)")
        check_range("gamma", gamma, 1e-6, 1.0, closed_high=True)
        check_range("alpha", alpha, 1e-6, float("inf"))
        if start_epoch is not None:
            check_range("start_epoch", start_epoch, 0, float("inf"))
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        self.lam, self.gamma, self.alpha, self.start_epoch = lam, gamma, alpha, start_epoch
        self.active = start_epoch == 0
        self.u: torch.Tensor | float = 0.0

    def on_epoch_start(self, epoch: int, state: Any) -> None:
        self.active = epoch >= _start_epoch(self.start_epoch, 0.8, state.cfg.epochs)

    def reduce(self, values: torch.Tensor) -> torch.Tensor:
        """The batch objective from per-sample losses: Σ p_i ℓ_i once active, the plain mean before."""
        if not self.active:
            return values.mean()
        e = torch.exp(values.detach() / self.lam)
        self.u = (1 - self.gamma) * self.u + self.gamma * self.alpha * e.mean()
        return (e / (self.u * len(values)) * values).sum()
