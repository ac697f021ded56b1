"""Model-stacks: K models of one architecture trained as one network, one kernel per layer for all K.

Small models leave a GPU mostly idle, and running K of them on K streams still issues K small
kernels per layer. A model-stack lays the K models side by side along the channels instead: model
k's channels are the k-th block of every layer, each convolution becomes a grouped convolution
(``groups = K``: block k of the output sees only block k of the input; for the few layers that
cuDNN groups slowly, a dense convolution with a block-diagonal weight), each batch norm has K·C
channels (per-channel statistics never mix models), and the input is the K models' own batches
stacked along the channels. The stacked network computes exactly what the K networks compute, so
the K runs stay independent: each keeps its own data, sampler, augmentation draws, head and loss
(``ltlib.fast.GraphEpoch`` with several members) and is saved as its own run.
"""

from __future__ import annotations

import copy
import typing

import torch
from torch import nn

from ltlib.models import BasicBlock, CifarResNet, Conv2d

# Layers with a stacked form (convolutions, batch norm, blocks), and layers that act on each channel
# alone or only reshape (the same layer serves the stack).
_STACKABLE: tuple[type[nn.Module], ...] = (Conv2d, nn.Conv2d, nn.BatchNorm2d, BasicBlock, CifarResNet, nn.Sequential)
_STACKABLE += (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)


def stack_reason(backbone: nn.Module) -> str | None:
    """Why this backbone cannot be stacked (None when it can)."""
    for name, m in backbone.named_modules():
        if type(m) in _STACKABLE:
            continue
        return f"layer {name or 'backbone'} ({type(m).__name__}) has no stacked form (convolutions, batch norm, ReLU and pooling have)"
    return None


class BlockDiagonalConv2d(nn.Conv2d):
    """K convolutions as one dense convolution whose weight is zero outside the K diagonal blocks.

    For the layers whose grouped form cuDNN runs slowly on an H100 (a ResNet's stem, with 3 input
    channels per group, and its stride-2 transitions: there it slices the groups apart and changes
    layouts, 0.2–0.5 ms per pass for eight models). The dense kernel does K times the arithmetic of
    the grouped one, which for these few layers costs less. A fixed mask keeps the off-diagonal
    weights at zero and their gradients zero.
    """

    mask: torch.Tensor

    def __init__(self, convs: list[nn.Conv2d]) -> None:
        c = convs[0]
        k = len(convs)
        super().__init__(k * c.in_channels, k * c.out_channels, *_geometry(c), 1, c.bias is not None)
        self.to(c.weight.device)
        self.blocks_of = (k, c.out_channels, c.in_channels)
        mask = torch.block_diag(*[torch.ones(c.out_channels, c.in_channels, device=c.weight.device)] * k)
        self.register_buffer("mask", mask[:, :, None, None], persistent=False)
        with torch.no_grad():
            self.weight.zero_()
            for block, conv in zip(self.blocks(self.weight), convs):
                block.copy_(conv.weight)
            if self.bias is not None:
                self.bias.copy_(torch.cat([conv.bias for conv in convs if conv.bias is not None]))  # all have one: one architecture

    def blocks(self, weight: torch.Tensor) -> list[torch.Tensor]:
        """The K diagonal blocks of a weight of this layer's shape (views): model k's own weight."""
        k, out, inp = self.blocks_of
        return [weight[i * out : (i + 1) * out, i * inp : (i + 1) * inp] for i in range(k)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


def _geometry(conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int], str | tuple[int, int], tuple[int, int]]:
    """``conv``'s kernel size, stride, padding and dilation as ``nn.Conv2d`` takes them: pairs (torch types the
    attributes as ``tuple[int, ...]``; a 2-D convolution's are pairs), the padding possibly a string."""

    def pair(value: tuple[int, ...]) -> tuple[int, int]:
        h, w = value
        return h, w

    padding = conv.padding if isinstance(conv.padding, str) else pair(conv.padding)
    return pair(conv.kernel_size), pair(conv.stride), padding, pair(conv.dilation)


def shortcut_embedding(k: int, cin: int, cout: int) -> torch.Tensor:
    """Weight (K·cout, K·cin, 1, 1) of option A's shortcut for K models: model k's input channel c goes to
    its output channel (cout − cin)//2 + c, the other output channels are zero."""
    weight = torch.zeros(k * cout, k * cin, 1, 1)
    for i in range(k):
        for c in range(cin):
            weight[i * cout + (cout - cin) // 2 + c, i * cin + c] = 1.0
    return weight


def _dense(conv: nn.Conv2d) -> bool:
    """Whether the stack computes this layer as a block-diagonal dense convolution (see BlockDiagonalConv2d)."""
    return conv.groups == 1 and (conv.in_channels < 8 or conv.stride != (1, 1))


def stack_backbones(backbones: list[nn.Module]) -> nn.Module:
    """One network computing all ``backbones`` (same architecture) side by side; features (B, K·D), model-major.

    The stack starts from the backbones' current weights and statistics; :func:`copy_pairs` returns them.
    """
    reason = stack_reason(backbones[0])
    if reason:
        raise ValueError(f"cannot stack these models: {reason}")
    k = len(backbones)
    stacked = copy.deepcopy(backbones[0])
    for name, module in list(stacked.named_modules()):
        if isinstance(module, BasicBlock) and (module.stride != 1 or module.pad):
            # A 1×1 convolution rather than a strided slice and a pad: it keeps the channels-last
            # layout in both passes (the pad's gradient came back in another layout, costing slow copies).
            embed = shortcut_embedding(k, module.conv1.in_channels, module.conv1.out_channels)
            module.embed = embed.to(module.conv1.weight.device)
            continue
        parts = [b.get_submodule(name) for b in backbones]
        if isinstance(module, nn.Conv2d) and _dense(module):
            # One architecture: every backbone's layer of this name is a convolution too.
            stacked.set_submodule(name, BlockDiagonalConv2d(typing.cast(list[nn.Conv2d], parts)))
            continue
        if isinstance(module, nn.Conv2d):
            new: nn.Module = Conv2d(
                k * module.in_channels,
                k * module.out_channels,
                *_geometry(module),
                k * module.groups,
                module.bias is not None,
                module.padding_mode,
            )
        elif isinstance(module, nn.BatchNorm2d):
            new = nn.BatchNorm2d(k * module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        else:
            continue
        states = [p.state_dict() for p in parts]
        state = {key: value if key == "num_batches_tracked" else torch.cat([s[key] for s in states]) for key, value in states[0].items()}
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
        module = stacked.get_submodule(key.rpartition(".")[0])
        parts = module.blocks(value) if isinstance(module, BlockDiagonalConv2d) and key.endswith("weight") else value.chunk(len(backbones))
        for part, state in zip(parts, own):
            sources.append(part)
            targets.append(state[key])
    return sources, targets


def stack_channels(xs: list[torch.Tensor]) -> torch.Tensor:
    """K batches (B, C, H, W) → one (B, K·C, H, W), batch k in channel block k, in the batches' memory layout."""
    if xs[0].is_contiguous(memory_format=torch.channels_last) and not xs[0].is_contiguous():
        return torch.stack([x.permute(0, 2, 3, 1) for x in xs], 3).flatten(3).permute(0, 3, 1, 2)
    return torch.stack(xs, 1).flatten(1, 2)
