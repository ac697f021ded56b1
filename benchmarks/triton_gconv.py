"""An experiment: Triton kernels for the grouped 3×3 convolutions of a model-stack (channels-last, stride 1, padding 1).

Measured by ``benchmarks/conv_probe.py`` against cuDNN on an H100 (docs/performance.md): correct, but
slower than cuDNN for the stack's shapes (forward and input gradient 1.1–1.8× the time, weight
gradient 1.9–2.7×; only the forward with 64 channels per group is faster, by 9 %), so ``ltlib``
does not use them.

A model-stack (``ltlib.stack``) of K ResNets turns every 3×3 convolution into a grouped one with
K groups of 16–64 channels. These kernels are written for that shape: one program computes a tile
of pixels for one group as nine small matrix products (one per tap of the 3×3 window, implicit
GEMM), reading the channels-last input directly.

- forward: y[p, g, o] = Σ_{tap, i} x[p + tap, g, i] · w[g, o, i, tap]
- input gradient: the same kernel on the output gradient with the weight flipped in space and
  transposed in channels,
- weight gradient: dw[g, o, i, tap] = Σ_p dy[p, g, o] · x[p + tap, g, i], summed in fixed chunks of
  pixels and then over chunks (no atomics, so the result does not depend on scheduling).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _conv3x3_kernel(X, Wt, Y, M, H, W, G: tl.constexpr, CIN: tl.constexpr, COUT: tl.constexpr, BLOCK_M: tl.constexpr):
    p = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    g = tl.program_id(1)
    col = p % W
    row = (p // W) % H
    ci = tl.arange(0, CIN)
    co = tl.arange(0, COUT)
    acc = tl.zeros((BLOCK_M, COUT), dtype=tl.float32)
    for t in tl.static_range(9):
        dh = t // 3 - 1
        dw = t % 3 - 1
        ok = (p < M) & (row + dh >= 0) & (row + dh < H) & (col + dw >= 0) & (col + dw < W)
        q = p + dh * W + dw
        xt = tl.load(X + q[:, None] * (G * CIN) + g * CIN + ci[None, :], mask=ok[:, None], other=0.0)
        wt = tl.load(Wt + ((g * 9 + t) * CIN + ci[:, None]) * COUT + co[None, :])
        acc += tl.dot(xt, wt)
    out = Y + p[:, None] * (G * COUT) + g * COUT + co[None, :]
    tl.store(out, acc.to(Y.dtype.element_ty), mask=(p < M)[:, None])


@triton.jit
def _conv3x3_wgrad_kernel(X, DY, DW, M, H, W, CHUNK, G: tl.constexpr, CIN: tl.constexpr, COUT: tl.constexpr, BLOCK_M: tl.constexpr):
    s = tl.program_id(0)
    g = tl.program_id(1)
    t = tl.program_id(2)
    dh = t // 3 - 1
    dw = t % 3 - 1
    ci = tl.arange(0, CIN)
    co = tl.arange(0, COUT)
    acc = tl.zeros((CIN, COUT), dtype=tl.float32)
    for start in range(s * CHUNK, s * CHUNK + CHUNK, BLOCK_M):
        p = start + tl.arange(0, BLOCK_M)
        col = p % W
        row = (p // W) % H
        inside = p < M
        ok = inside & (row + dh >= 0) & (row + dh < H) & (col + dw >= 0) & (col + dw < W)
        q = p + dh * W + dw
        xt = tl.load(X + q[:, None] * (G * CIN) + g * CIN + ci[None, :], mask=ok[:, None], other=0.0)
        dyt = tl.load(DY + p[:, None] * (G * COUT) + g * COUT + co[None, :], mask=inside[:, None], other=0.0)
        acc += tl.dot(tl.trans(xt), dyt)
    tl.store(DW + (((s * G + g) * 9 + t) * CIN + ci[:, None]) * COUT + co[None, :], acc)


def _pixels(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """(x as contiguous NHWC, N·H·W, H, W)."""
    n, _, h, w = x.shape
    return x.permute(0, 2, 3, 1).contiguous(), n * h * w, h, w


def conv3x3(x: torch.Tensor, weight: torch.Tensor, groups: int, block_m: int = 128, num_warps: int = 4) -> torch.Tensor:
    """Grouped 3×3 convolution, stride 1, padding 1, no bias; ``x`` (N, G·Cin, H, W), ``weight`` (G·Cout, Cin, 3, 3).

    Returns a channels-last tensor of ``x``'s dtype; computes in float32.
    """
    cout, cin = weight.shape[0] // groups, weight.shape[1]
    xs, m, h, w = _pixels(x)
    # (G, 9, Cin, Cout): each tap's weight as the right-hand matrix of a product.
    wt = weight.to(x.dtype).view(groups, cout, cin, 9).permute(0, 3, 2, 1).contiguous()
    y = torch.empty((x.shape[0], groups * cout, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    grid = (triton.cdiv(m, block_m), groups)
    _conv3x3_kernel[grid](xs, wt, y, m, h, w, groups, cin, cout, block_m, num_warps=num_warps)
    return y


def conv3x3_input_grad(dy: torch.Tensor, weight: torch.Tensor, groups: int, **launch) -> torch.Tensor:
    """Gradient of :func:`conv3x3` with respect to its input: the convolution of ``dy`` with the
    weight flipped in space and with input and output channels swapped."""
    cout, cin = weight.shape[0] // groups, weight.shape[1]
    flipped = weight.view(groups, cout, cin, 3, 3).flip(3, 4).transpose(1, 2).reshape(groups * cin, cout, 3, 3)
    return conv3x3(dy, flipped, groups, **launch)


def conv3x3_weight_grad(
    x: torch.Tensor, dy: torch.Tensor, groups: int, chunk: int = 4096, block_m: int = 128, num_warps: int = 4
) -> torch.Tensor:
    """Gradient of :func:`conv3x3` with respect to its weight, (G·Cout, Cin, 3, 3) in float32."""
    cin, cout = x.shape[1] // groups, dy.shape[1] // groups
    xs, m, h, w = _pixels(x)
    dys = dy.permute(0, 2, 3, 1).contiguous()
    chunk = min(chunk, triton.cdiv(m, block_m) * block_m)
    splits = triton.cdiv(m, chunk)
    partial = torch.empty((splits, groups, 9, cin, cout), dtype=torch.float32, device=x.device)
    _conv3x3_wgrad_kernel[(splits, groups, 9)](xs, dys, partial, m, h, w, chunk, groups, cin, cout, block_m, num_warps=num_warps)
    return partial.sum(0).permute(0, 3, 2, 1).reshape(groups * cout, cin, 3, 3)
