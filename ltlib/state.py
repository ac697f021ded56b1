"""The live state of a run, handed to every method's ``on_epoch_start(epoch, state)`` hook.

Its own module so the method families can type their hooks without importing the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # annotations only: the families import this module, the loop imports them
    from ltlib.config import Config
    from ltlib.data import Dataset
    from ltlib.inputs import Inputs
    from ltlib.losses import Loss
    from ltlib.models import Classifier
    from ltlib.samplers import Sampler


@dataclass
class TrainState:
    """The live objects of a run.

    A hook may change the method mid-run: the loss's class weights (DRW), ``sampler`` (a two-stage
    schedule switches to class-balanced sampling) or ``class_probs`` (meta-learned sampling), the
    optimiser's learning rate, and it may record per-epoch values in ``log`` (stored with the
    epoch's metrics, e.g. learned per-class rates). A hook that changes what a training step does
    (the trained parameters at a stage switch, SAM switching on, a mixing method's start) sets
    ``rebuild``: the loop then makes a fresh epoch runner (the graph engine captures anew).
    """

    cfg: Config
    data: Dataset
    model: Classifier
    loss: Loss
    optimizer: torch.optim.Optimizer
    class_counts: np.ndarray
    device: torch.device
    generator: torch.Generator
    sampler: Sampler
    inputs: Inputs
    epoch: int = 0
    class_probs: np.ndarray | None = None
    log: dict[str, Any] = field(default_factory=dict)
    rebuild: bool = False
