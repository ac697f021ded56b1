"""Model inputs: stored uint8 images (or float features) → normalised, augmented float batches on
the device, and batched prediction. Shared by the training loop, the graph engine and evaluation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ltlib.data import Dataset, random_crop_flip

if TYPE_CHECKING:
    from ltlib.models import Classifier


class Inputs:
    """Turns stored uint8 images (or float features) into normalised float batches on the device."""

    def __init__(self, data: Dataset, device: torch.device) -> None:
        x = data.x_train.float()
        dims = (0, 2, 3) if data.is_image else (0,)
        shape = (1, -1, 1, 1) if data.is_image else (1, -1)
        scale = 255.0 if data.is_image else 1.0
        self.mean = (x.mean(dims) / scale).reshape(shape).to(device)
        self.std = (x.std(dims) / scale).clamp_min(1e-6).reshape(shape).to(device)
        self.scale, self.data, self.device = scale, data, device
        self.channels_last = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x.to(self.device).float() / self.scale
        if generator is not None and self.data.is_image:
            x = random_crop_flip(x, self.data.crop_padding, self.data.flip, generator)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@torch.no_grad()
def predict(model: Classifier, inputs: Inputs, x: torch.Tensor, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and penultimate features of ``x`` in large batches, model in eval mode (float32)."""
    # Large batches keep a GPU busy; on a CPU, batches past ~256 images spill the caches (2× slower).
    batch_size = batch_size or (1024 if inputs.device.type == "cuda" else 256)
    # Equal batches (10,000 images: 10 × 1,000, not 9 × 1,024 + 784): one shape for cuDNN to tune.
    batch_size = math.ceil(len(x) / max(1, math.ceil(len(x) / batch_size)))
    model.eval()
    logits, feats = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(inputs(x[i : i + batch_size]))
        feats.append(f.float())
        logits.append(model.head(f).float())
    model.train()
    return torch.cat(logits), torch.cat(feats)
