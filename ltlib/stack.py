"""Model-stacks: K models of one architecture trained as one network, one kernel per layer for all K.

Small models leave a GPU mostly idle, and running K of them on K streams still issues K small
kernels per layer. A model-stack lays the K models side by side along the channels instead: model
k's channels are the k-th block of every layer, each convolution becomes a grouped convolution
(``groups = K``: block k of the output sees only block k of the input), each batch norm has K·C
channels (per-channel statistics never mix models), and the input is the K models' own batches
stacked along the channels. The stacked network computes exactly what the K networks compute, so
the K runs stay independent: each keeps its own data, sampler, augmentation draws, head and loss
(``ltlib.fast.GraphEpoch`` with several members) and is saved as its own run.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ltlib.models import BasicBlock, CifarResNet, Conv2d

# Layers that act on each channel alone (or only reshape): the same layer serves the stack.
_PER_CHANNEL = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Sequential, CifarResNet)


def stack_reason(backbone: nn.Module) -> str | None:
    """Why this backbone cannot be stacked (None when it can)."""
    for name, m in backbone.named_modules():
        if type(m) in (Conv2d, nn.Conv2d, nn.BatchNorm2d, BasicBlock) or type(m) in _PER_CHANNEL:
            continue
        return f"layer {name or 'backbone'} ({type(m).__name__}) has no stacked form (convolutions, batch norm, ReLU and pooling have)"
    return None


def stack_backbones(backbones: list[nn.Module]) -> nn.Module:
    """One network computing all ``backbones`` (same architecture) side by side; features (B, K·D), model-major.

    The stack starts from the backbones' current weights and statistics; :func:`copy_back` returns them.
    """
    reason = stack_reason(backbones[0])
    if reason:
        raise ValueError(f"cannot stack these models: {reason}")
    k = len(backbones)
    stacked = copy.deepcopy(backbones[0])
    for name, module in list(stacked.named_modules()):
        if isinstance(module, BasicBlock):
            module.stack = k
            continue
        if isinstance(module, nn.Conv2d):
            new: nn.Module = Conv2d(
                k * module.in_channels,
                k * module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                k * module.groups,
                module.bias is not None,
                module.padding_mode,
            )
        elif isinstance(module, nn.BatchNorm2d):
            new = nn.BatchNorm2d(k * module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        else:
            continue
        parts = [b.get_submodule(name).state_dict() for b in backbones]
        state = {key: value if key == "num_batches_tracked" else torch.cat([p[key] for p in parts]) for key, value in parts[0].items()}
        new.to(next(iter(state.values())).device).load_state_dict(state)
        stacked.set_submodule(name, new)
    return stacked


def copy_pairs(stacked: nn.Module, backbones: list[nn.Module]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(sources, targets): each backbone's weights and statistics as slices of the stack, and the backbone's own tensors."""
    sources, targets = [], []
    own = [b.state_dict() for b in backbones]
    for key, value in stacked.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        for chunk, state in zip(value.chunk(len(backbones)), own):
            sources.append(chunk)
            targets.append(state[key])
    return sources, targets


def stack_channels(xs: list[torch.Tensor]) -> torch.Tensor:
    """K batches (B, C, H, W) → one (B, K·C, H, W), batch k in channel block k, in the batches' memory layout."""
    if xs[0].is_contiguous(memory_format=torch.channels_last) and not xs[0].is_contiguous():
        return torch.stack([x.permute(0, 2, 3, 1) for x in xs], 3).flatten(3).permute(0, 3, 1, 2)
    return torch.stack(xs, 1).flatten(1, 2)
