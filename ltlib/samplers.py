"""Class-level samplers: which classes a training batch is drawn from.

``class_probabilities(name, class_counts, epoch, epochs, **params)`` gives the probability of
drawing each class; images are then drawn uniformly within a class, with replacement, as the
papers' samplers do. ``instance`` is the ordinary shuffled epoch (each image once).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ltlib.registry import Registry

SAMPLERS = Registry("sampler", fixed=("class_counts", "epoch", "epochs"))


def available() -> list[str]:
    return SAMPLERS.available()


def class_probabilities(name: str, class_counts: np.ndarray | list[int], epoch: int = 0, epochs: int = 1, **params: Any) -> np.ndarray:
    """Per-class sampling probabilities (sum to 1) of sampler ``name`` at ``epoch`` of ``epochs``."""
    counts = np.asarray(class_counts, dtype=np.float64)
    p = np.asarray(SAMPLERS.build(name, counts, epoch, epochs, **params), dtype=np.float64)
    return p / p.sum()


def power_law(counts: np.ndarray, q: float) -> np.ndarray:
    """p_c ∝ n_c^q over the classes present (q=1 instance, q=0 class-balanced, q=½ square-root)."""
    present = counts > 0
    p = np.zeros_like(counts)
    p[present] = counts[present] ** q
    return p / p.sum()


@SAMPLERS.register("instance", paper="the standard shuffled epoch")
def instance(class_counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
    """Instance-balanced: every image equally likely, so p_c ∝ n_c."""
    return power_law(class_counts, 1.0)


@SAMPLERS.register("class_balanced", paper="Kang et al., Decoupling Representation and Classifier, ICLR 2020")
def class_balanced(class_counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
    """Class-balanced: every class equally likely, p_c = 1/C."""
    return power_law(class_counts, 0.0)


def draw_indices(
    labels: torch.Tensor, class_probs: np.ndarray, n: int, generator: torch.Generator, shuffle_epoch: bool = False
) -> torch.Tensor:
    """``n`` training indices: a random permutation when ``shuffle_epoch``, else class-probability draws.

    Image i of class c is drawn with probability p_c / n_c (with replacement), on ``labels``' device.
    """
    if shuffle_epoch:
        return torch.randperm(len(labels), generator=generator, device=labels.device)[:n]
    counts = torch.bincount(labels, minlength=len(class_probs)).clamp_min(1)
    p = torch.as_tensor(class_probs, dtype=torch.float32, device=labels.device)
    weights = (p / counts)[labels]
    return torch.multinomial(weights, n, replacement=True, generator=generator)
