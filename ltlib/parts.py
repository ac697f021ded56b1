"""One place that builds a run's parts from its config: model (with head and norm), loss,
optimiser, schedule, mixer and sampler. Used by the training loop, the graph engine's benchmarks
and :func:`build_saved_model` (a saved run's model for inference, ``ltlib.runs.load_model``), so a run is
rebuilt exactly as it was trained.
"""

from __future__ import annotations

import threading
import typing
from dataclasses import dataclass

import numpy as np
import torch

from ltlib import losses, mixing, optim, samplers, schedules
from ltlib.calibration import PosthocLogits
from ltlib.config import Config
from ltlib.data import Dataset
from ltlib.models import Classifier, auto_model, build_model

# Weights are initialised from the global RNG: the lock keeps runs set up side by side (ltlib.sweep,
# two app sessions) from drawing from each other's seed. Reentrant: build_saved_model holds it around
# build_classifier to restore the caller's RNG before another run can seed it.
_INIT_LOCK = threading.RLock()


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
    def reduce(self) -> torch.nn.Module | None:
        """The optimiser's own batch objective from per-sample losses (ABSGD), or None for the mean."""
        if "reduces batch" not in optim.OPTIMIZERS.get(self.cfg.optimizer).traits:
            return None
        return typing.cast(optim.BatchReducer, self.optimizer).objective  # what the trait promises


def build_model_and_loss(cfg: Config, data: Dataset, device: torch.device) -> tuple[Classifier, str, losses.Loss]:
    """The model (with the head its loss trains with) and the loss, weights drawn from ``cfg.seed``."""
    return build_classifier(cfg, data.input_shape, data.class_counts(), device)


def build_classifier(
    cfg: Config, input_shape: tuple[int, ...], class_counts: np.ndarray, device: torch.device
) -> tuple[Classifier, str, losses.Loss]:
    """:func:`build_model_and_loss` from what a saved run records of its data: input shape and training counts."""
    with _INIT_LOCK:
        torch.manual_seed(cfg.seed)
        loss_fn = losses.build(cfg.loss, class_counts, **cfg.loss_params).to(device)
        model_name = auto_model(input_shape) if cfg.model == "auto" else cfg.model
        model = build_model(
            model_name, input_shape, len(class_counts), loss_fn.head, loss_fn.head_params, cfg.norm, cfg.norm_params, **cfg.model_params
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


class SavedModel(torch.nn.Module):
    """A saved run's model for inference: raw inputs, as the run's dataset stores them, to logits.

    Input: what ``Dataset.x_test`` holds. Images: (N, C, H, W), channels first in the dataset's
    order, values 0 … 255 (``uint8``, or floats on that scale). Feature vectors (toy2d): (N, D) floats.
    ``input_shape`` and ``input_dtype`` say which. The layer normalises them as training did (÷ 255
    for images, then the training set's per-channel or per-feature mean and standard deviation).
    Output: (N, classes) float32 logits; with ``posthoc`` the run's post-hoc adjustments (τ-norm,
    logit adjustment) are applied, so the output is what the run's ``test_logits`` hold.
    Made in eval mode: batch norm uses its running statistics, so each row's logits depend on that row alone.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        classifier: Classifier,
        mean: torch.Tensor,
        std: torch.Tensor,
        input_shape: tuple[int, ...],
        input_dtype: str,
        posthoc: PosthocLogits | None,
    ) -> None:
        super().__init__()
        self.classifier, self.posthoc = classifier, posthoc
        self.input_shape, self.input_dtype = tuple(input_shape), input_dtype
        # As ltlib.inputs.Inputs: uint8 images are scaled to [0, 1] before the normalisation.
        self.scale = 255.0 if input_dtype == "uint8" else 1.0
        broadcast = (1, -1, 1, 1) if len(self.input_shape) == 3 else (1, -1)
        self.register_buffer("mean", mean.float().reshape(broadcast))
        self.register_buffer("std", std.float().reshape(broadcast))
        self.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of raw inputs (the run's ``test_features``)."""
        return self.classifier.features((x.float() / self.scale - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        logits = self.classifier.head(f)
        if self.posthoc is not None:
            logits = self.posthoc(logits, f, getattr(self.classifier.head, "weight", None))
        return logits


def build_saved_model(
    cfg: Config,
    input_shape: tuple[int, ...],
    input_dtype: str,
    class_counts: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
    posthoc: bool = True,
) -> SavedModel:
    """A saved run's model, to load its weights into (``ltlib.runs.load_model`` does): the model its
    config builds (model, head, norm and their parameters) with the layers its schedule adds in
    training (LWS, MARC), the input normalisation and, with ``posthoc``, the config's post-hoc
    adjustments. On the CPU; the caller's random state is left as it was.
    """
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        model, _, _ = build_classifier(cfg, input_shape, class_counts, torch.device("cpu"))
    schedules.build(cfg.schedule, cfg.epochs, **cfg.schedule_params).restructure(model)
    adjusts = posthoc and (cfg.tau_norm is not None or cfg.posthoc_tau != 0)
    return SavedModel(
        model, mean, std, input_shape, input_dtype, PosthocLogits(class_counts, cfg.tau_norm, cfg.posthoc_tau) if adjusts else None
    )
