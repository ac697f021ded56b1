"""Mixing and data-side augmentation applied to a training batch on the device.

A mixing method maps a batch ``(x, y)`` to ``(x', y_a, y_b, lam)``: the loss is
``lam·ℓ(z, y_a) + (1 − lam)·ℓ(z, y_b)`` per sample, so label mass always sums to one.
``lam`` is a tensor of shape (B,). ``none`` returns the batch unchanged with lam = 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ltlib.models import cumulative_alpha
from ltlib.registry import Registry, check_range
from ltlib.samplers import power_law

MIXING = Registry("mixing", fixed=("class_counts",))


def available() -> list[str]:
    return MIXING.available()


@dataclass
class MixContext:
    """What a mixing method may use besides the batch: the class counts and a way to draw more data."""

    class_counts: np.ndarray
    generator: torch.Generator
    epoch: int = 0
    epochs: int = 1
    # draw_batch(class_probabilities, n) -> (x, y): an augmented batch from the training set.
    draw_batch: Callable[[np.ndarray, int], tuple[torch.Tensor, torch.Tensor]] | None = None
    # The model and loss being trained, for methods that perturb inputs with gradients (GAE).
    model: torch.nn.Module | None = None
    loss: torch.nn.Module | None = None


class Mixing:
    """Base class: subclasses implement ``__call__(x, y, ctx)``."""

    def __init__(self, class_counts: np.ndarray) -> None:
        self.class_counts = np.asarray(class_counts)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, ctx: MixContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def build(name: str, class_counts: np.ndarray, **params: Any) -> Mixing:
    return MIXING.build(name, class_counts, **params)


def sample_beta(alpha: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One λ ~ Beta(α, α), drawn with ``generator`` (two gamma draws) so runs stay seeded."""
    a = torch.full((2,), float(alpha), device=device)
    g = torch._standard_gamma(a, generator=generator)
    return g[0] / g.sum()


@MIXING.register("none", paper="no mixing")
class NoMixing(Mixing):
    """No mixing: the batch is used as drawn."""

    def __call__(self, x, y, ctx):
        return x, y, y, torch.ones(len(y), device=x.device)


@MIXING.register("mixup", paper="Zhang, Cisse, Dauphin & Lopez-Paz, mixup, ICLR 2018")
class Mixup(Mixing):
    """Mixup: x' = λx_i + (1−λ)x_j, label λ·y_i + (1−λ)·y_j, λ ~ Beta(α, α), one λ per batch."""

    def __init__(self, class_counts: np.ndarray, alpha: float = 1.0) -> None:
        super().__init__(class_counts)
        check_range("alpha", alpha, 1e-6, float("inf"))
        self.alpha = alpha

    def __call__(self, x, y, ctx):
        lam = sample_beta(self.alpha, ctx.generator, x.device)
        perm = torch.randperm(len(y), generator=ctx.generator, device=x.device)
        return lam * x + (1 - lam) * x[perm], y, y[perm], lam.expand(len(y))


@MIXING.register(
    "bbn", paper="Zhou, Cui, Wei & Chen, BBN: Bilateral-Branch Network with Cumulative Learning, CVPR 2020", needs=("bbn model",)
)
class BilateralSampling(Mixing):
    """BBN's input pairing: the batch feeds the conventional branch, a reversed-sampler batch the re-balancing branch.

    The reversed batch is drawn with p_c ∝ 1/n_c (the official w_c = n_max/n_c, normalised) via
    ``ctx.draw_batch``; the pair goes to ``--model bbn`` as one (B, 2, …) tensor and the loss is
    α·ℓ(z, y_c) + (1 − α)·ℓ(z, y_r) with the cumulative-learning α = 1 − (t/T)² of the epoch.
    """

    def __call__(self, x, y, ctx):
        if not getattr(ctx.model, "bilateral", False):
            raise ValueError("mixing 'bbn' feeds the two branches of a BBN model; use it with --model bbn")
        x_r, y_r = ctx.draw_batch(power_law(self.class_counts.astype(np.float64), -1.0), len(y))
        lam = torch.full((len(y),), cumulative_alpha(ctx.epoch, ctx.epochs), device=x.device)
        return torch.stack([x, x_r], dim=1), y, y_r, lam
