"""Optimisers, registered by name. Every optimiser is stepped with a closure
(``optimizer.step(closure)``), so methods that need a second forward–backward pass (SAM) fit
the same loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ltlib.registry import Registry

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
