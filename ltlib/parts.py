"""One place that builds a run's parts from its config: model (with head and norm), loss,
optimiser, schedule, mixer and sampler. Used by the training loop, the graph engine's benchmarks
and the embedding views (decision regions), so a run is rebuilt exactly as it was trained.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from ltlib import losses, mixing, optim, samplers, schedules
from ltlib.config import Config
from ltlib.data import Dataset
from ltlib.models import Classifier, auto_model, build_model

# Weights are initialised from the global RNG: the lock keeps runs set up side by side (ltlib.sweep,
# two app sessions) from drawing from each other's seed.
_INIT_LOCK = threading.Lock()


@dataclass
class Parts:
    """The live method objects of one run."""

    model: Classifier
    model_name: str
    loss: losses.Loss
    optimizer: torch.optim.Optimizer
    schedule: schedules.Schedule
    mixer: mixing.Mixing
    sampler: samplers.Sampler
    cfg: Config

    @property
    def hooks(self) -> list:
        """The parts whose ``on_epoch_start(epoch, state)`` the loop calls, in this order.

        The model always (it tells class-aware layers the class groups); the others when their
        registry entry declares the "epoch hook" trait (DRW, staged losses, SAM's start…). The
        sampler is not among them: the loop calls the hook of the sampler in use, ``state.sampler``,
        last (a two-stage schedule may have replaced it).
        """
        chosen = [
            (self.schedule, schedules.SCHEDULES, self.cfg.schedule),
            (self.loss, losses.LOSSES, self.cfg.loss),
            (self.mixer, mixing.MIXING, self.cfg.mixing),
            (self.optimizer, optim.OPTIMIZERS, self.cfg.optimizer),
        ]
        return [part for part, registry, name in chosen if "epoch hook" in registry.get(name).traits] + [self.model]

    @property
    def reduce(self):  # noqa: ANN201 - a callable or None
        """The optimiser's own batch objective from per-sample losses (ABSGD), or None for the mean."""
        return self.optimizer.objective if "reduces batch" in optim.OPTIMIZERS.get(self.cfg.optimizer).traits else None


def build_model_and_loss(cfg: Config, data: Dataset, device: torch.device) -> tuple[Classifier, str, losses.Loss]:
    """The model (with the head its loss trains with) and the loss, weights drawn from ``cfg.seed``."""
    counts = data.class_counts()
    with _INIT_LOCK:
        torch.manual_seed(cfg.seed)
        loss_fn = losses.build(cfg.loss, counts, **cfg.loss_params).to(device)
        model_name = auto_model(data.input_shape) if cfg.model == "auto" else cfg.model
        model = build_model(
            model_name, data.input_shape, data.num_classes, loss_fn.head, loss_fn.head_params, cfg.norm, cfg.norm_params, **cfg.model_params
        )
    return model.to(device), model_name, loss_fn


def build_parts(cfg: Config, data: Dataset, device: torch.device, model: tuple[Classifier, str, losses.Loss] | None = None) -> Parts:
    """Every part of a run of ``cfg`` on ``data`` (``model``: an already built model, name and loss)."""
    counts = data.class_counts()
    model_, model_name, loss_fn = model if model is not None else build_model_and_loss(cfg, data, device)
    # A loss may own layers sized by the backbone (ResCom's projection head); they train with the model.
    loss_fn.attach(model_)
    loss_fn.to(device)
    trainable = [*model_.parameters(), *loss_fn.parameters()]
    optimizer = optim.build(cfg.optimizer, trainable, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov, **cfg.optimizer_params)
    schedule = schedules.build(cfg.schedule, cfg.epochs, **cfg.schedule_params)
    mixer = mixing.build(cfg.mixing, counts, **cfg.mixing_params)
    sampler = samplers.build(cfg.sampler, counts, cfg.epochs, **cfg.sampler_params)
    return Parts(model_, model_name, loss_fn, optimizer, schedule, mixer, sampler, cfg)
