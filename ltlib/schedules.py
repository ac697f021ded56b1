"""Training schedules: the learning rate over epochs, and hooks that change the method mid-run.

A schedule hook (registry ``SCHEDULES``) is called at the start of every epoch with the training
state and may change the loss's class weights, the sampler, … (DRW, two-stage schemes).
"""

from __future__ import annotations

import math
from typing import Any

from ltlib.losses import effective_number_weights
from ltlib.registry import Registry, check_range

SCHEDULES = Registry("schedule", fixed=("epochs",))


def available() -> list[str]:
    return SCHEDULES.available()


def learning_rate(
    epoch: int,
    base_lr: float,
    epochs: int,
    warmup_epochs: int = 0,
    milestones: tuple[int, ...] = (),
    gamma: float = 0.1,
    cosine: bool = False,
) -> float:
    """Learning rate of (0-based) ``epoch``: linear warm-up, then step decay at ``milestones`` or cosine.

    Warm-up follows the LDAM-DRW code: epoch e < w uses base_lr·(e+1)/w.
    """
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    if cosine:
        t = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
        return 0.5 * base_lr * (1 + math.cos(math.pi * t))
    return base_lr * gamma ** sum(epoch >= m for m in milestones)


class Schedule:
    """Base hook: ``on_epoch_start(epoch, state)``; ``state`` has ``loss``, ``model``, ``class_counts``…"""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_start(self, epoch: int, state: Any) -> None:
        pass


@SCHEDULES.register("none", paper="no schedule")
class NoSchedule(Schedule):
    """No change during training."""


@SCHEDULES.register("drw", paper="Cao, Wei, Gaidon, Arechiga & Ma, LDAM-DRW, NeurIPS 2019")
class DeferredReweighting(Schedule):
    """Deferred re-weighting: from ``start_epoch`` the loss weights classes by effective number.

    w_c ∝ (1−β)/(1−β^n_c), normalised to sum to C, β = 0.9999 (Cui et al. 2019). The paper starts at
    epoch 160 of 200; by default start = 0.8 · epochs so shorter runs keep the same proportion.
    """

    def __init__(self, epochs: int, start_epoch: int | None = None, beta: float = 0.9999) -> None:
        super().__init__(epochs)
        check_range("beta", beta, 0.0, 1.0)
        self.start_epoch = int(0.8 * epochs) if start_epoch is None else start_epoch
        if self.start_epoch < 0:
            raise ValueError(f"start_epoch={start_epoch} is out of range; allowed: >= 0")
        self.beta = beta

    def on_epoch_start(self, epoch: int, state: Any) -> None:
        if epoch == self.start_epoch:
            state.loss.set_class_weight(effective_number_weights(state.class_counts, self.beta))


def build(name: str, epochs: int, **params: Any) -> Schedule:
    return SCHEDULES.build(name, epochs, **params)
