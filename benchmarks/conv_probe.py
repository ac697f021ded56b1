"""Probe: the grouped 3×3 convolutions of a stack of 8 ResNet-32s, cuDNN against Triton kernels (triton_gconv.py).

Each pass (forward, input gradient, weight gradient) of each stage's shape is captured 20 times in
a CUDA graph and replayed, so launch costs are out; "dense ×8 batch" is one model's convolution
on a batch 8 times larger (the same bytes and arithmetic without groups). Also: one ResNet-32's
graph epoch at batch 128 and 1024.

python benchmarks/conv_probe.py
"""

from __future__ import annotations

import argparse
import itertools
from functools import partial

import torch
import torch.nn.functional as F
import triton_gconv as gconv  # benchmarks/triton_gconv.py, beside this script

K, BATCH = 8, 128
STAGES = [(16, 32), (32, 16), (64, 8)]  # channels per model, image side
PEAK_BYTES = 3.35e12  # H100 SXM HBM3


def graph_ms(fn, reps: int = 20) -> float:
    """Milliseconds per call of ``fn``, replayed from a CUDA graph of ``reps`` calls."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (10 * reps)


def cudnn_passes(x, w, groups):
    args = (None, (1, 1), (1, 1), (1, 1), False, (0, 0), groups)
    y = F.conv2d(x, w, None, 1, 1, 1, groups)
    dy = torch.randn_like(y)
    return {
        "forward": lambda: F.conv2d(x, w, None, 1, 1, 1, groups),
        "input grad": lambda: torch.ops.aten.convolution_backward(dy, x, w, *args, (True, False, False)),
        "weight grad": lambda: torch.ops.aten.convolution_backward(dy, x, w, *args, (False, True, False)),
    }, dy


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def conv_rows() -> None:
    torch.backends.cudnn.benchmark = True
    for c, side in STAGES:
        x = torch.randn(BATCH, K * c, side, side, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        w = (torch.randn(K * c, c, 3, 3, device="cuda") / (3 * c**0.5)).to(torch.bfloat16)
        act_bytes = x.numel() * 2
        print(
            f"\n# stage C={c}/group, {side}x{side}, activation {act_bytes / 1e6:.1f} MB; floor per pass ~{3 * act_bytes / PEAK_BYTES * 1e3:.3f} ms (read+write+read)"
        )
        passes, dy = cudnn_passes(x, w, K)
        cud = {name: graph_ms(fn) for name, fn in passes.items()}
        xd = x.view(BATCH, K, c, side, side).transpose(0, 1).reshape(BATCH * K, c, side, side).contiguous(memory_format=torch.channels_last)
        dense, _ = cudnn_passes(xd, w[:c].contiguous(), 1)
        den = {name: graph_ms(fn) for name, fn in dense.items()}
        ref_y, ref_dx, ref_dw = passes["forward"](), passes["input grad"]()[0], passes["weight grad"]()[1]
        for name in cud:
            print(f"{name:12s} cuDNN grouped {cud[name]:.4f} ms   dense x8 batch {den[name]:.4f} ms")
        best = {}
        for bm, warps in itertools.product((64, 128, 256), (4, 8)):
            f = partial(gconv.conv3x3, x, w, K, block_m=bm, num_warps=warps)
            d = partial(gconv.conv3x3_input_grad, dy, w, K, block_m=bm, num_warps=warps)
            fwd, dgr = graph_ms(f), graph_ms(d)
            errs = (rel_err(f(), ref_y), rel_err(d(), ref_dx))
            print(f"triton fwd/dgrad block_m={bm:3d} warps={warps}: {fwd:.4f} / {dgr:.4f} ms  rel err {errs[0]:.1e} / {errs[1]:.1e}")
            best["forward"] = min(best.get("forward", 9), fwd)
            best["input grad"] = min(best.get("input grad", 9), dgr)
        for bm, warps, chunk in itertools.product((64, 128, 256), (4, 8), (1024, 4096, 16384)):
            f = partial(gconv.conv3x3_weight_grad, x, dy, K, chunk=chunk, block_m=bm, num_warps=warps)
            wgr, err = graph_ms(f), rel_err(f(), ref_dw)
            print(f"triton wgrad block_m={bm:3d} warps={warps} chunk={chunk:5d}: {wgr:.4f} ms  rel err {err:.1e}")
            best["weight grad"] = min(best.get("weight grad", 9), wgr)
        print("best triton: " + ", ".join(f"{k} {v:.4f} ms ({cud[k] / v:.2f}x cuDNN)" for k, v in best.items()), flush=True)


def batch_rows() -> None:
    from stack_probe import build, epoch_seconds  # benchmarks/stack_probe.py, beside this script

    from ltlib.data import load_dataset

    ds = load_dataset("cifar10")
    for batch in (128, 1024):
        s = epoch_seconds([build(ds, 1, batch_size=batch)])
        print(f"one ResNet-32, batch {batch:4d}: {s:.3f} s/epoch ({s * 8:.3f} s for eight epochs' worth of images)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--skip-batch", action="store_true")
    args = p.parse_args()
    conv_rows()
    if not args.skip_batch:
        batch_rows()


if __name__ == "__main__":
    main()
