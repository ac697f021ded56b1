"""Probe: s/epoch of K ResNet-32s trained as one model-stack vs on K streams (CIFAR-10-LT, CE, batch 128).

python benchmarks/stack_probe.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ltlib import fast
from ltlib.data import load_dataset
from ltlib.fast import GraphEpoch, Member
from ltlib.inputs import Inputs
from ltlib.parts import build_model_and_loss
from ltlib.presets import preset
from ltlib.stack import stack_backbones
from ltlib.train import prepare_data


def members(ds, k: int, channels_last: bool, seed0: int = 0, batch_size: int | None = None):
    out = []
    for seed in range(seed0, seed0 + k):
        cfg = preset("cifar10-lt", seed=seed, **({"batch_size": batch_size} if batch_size else {}))
        data = prepare_data(cfg, ds)
        inputs = Inputs(data, torch.device("cuda"))
        inputs.channels_last = channels_last
        model, _, loss_fn = build_model_and_loss(cfg, data, torch.device("cuda"))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        g = torch.Generator(device="cuda").manual_seed(seed)
        out.append((model, Member(loss_fn, model.head, inputs, data.x_train.cuda(), data.y_train.cuda(), g)))
    return cfg, out


def build(
    ds, k: int, channels_last: bool = True, compile: bool = False, seed0: int = 0, capture: bool = True, batch_size: int | None = None
) -> GraphEpoch:
    cfg, ms = members(ds, k, channels_last, seed0, batch_size)
    backbone = ms[0][0].backbone if k == 1 else stack_backbones([m.backbone for m, _ in ms])
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    if compile:
        torch._dynamo.config.recompile_limit = 64
        backbone.compile(dynamic=False)
        for _, m in ms:
            m.head.compile(dynamic=False)
            m.loss_fn.compile(dynamic=False)
    return GraphEpoch(backbone, [m for _, m in ms], cfg.batch_size, cfg, True, capture)


def epoch_seconds(epochs: list[GraphEpoch], n_epochs: int = 6) -> float:
    streams = [torch.cuda.Stream() for _ in epochs]
    times = []
    for _ in range(n_epochs):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for e, s in zip(epochs, streams):
            with torch.cuda.stream(s):
                for order in e.orders:
                    order.copy_(torch.randperm(len(order), device="cuda"))
                e.run(0.1)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def profile(epoch: GraphEpoch) -> None:
    """Print the kernels of two epochs, by total GPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        epoch_seconds([epoch], 2)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90), flush=True)


def profile_ops(ds, k: int, path: str) -> None:
    """Write the CUDA time of each op and input shape of one uncaptured epoch of a stack to ``path``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    epoch = build(ds, k, capture=False)
    epoch_seconds([epoch], 2)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        epoch_seconds([epoch], 1)
    table = prof.key_averages(group_by_input_shape=True).table(sort_by="cuda_time_total", row_limit=60, max_name_column_width=40)
    with open(path, "w") as f:
        f.write(table)
    kernels = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=120)
    with open(path + ".kernels", "w") as f:
        f.write(kernels)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--compile", action="store_true")
    p.add_argument("--sizes", type=int, nargs="*", default=[2, 4, 8])
    p.add_argument("--streams", action="store_true", help="also stacks on several streams")
    p.add_argument("--profile", action="store_true", help="top kernels of one epoch of the largest stack")
    p.add_argument("--profile-ops", help="write the CUDA time per op and shape of an uncaptured stack of 8 to this file, then stop")
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True  # as train() sets it
    ds = load_dataset("cifar10")
    if args.profile_ops:
        profile_ops(ds, 8, args.profile_ops)
        return
    rows = []

    def row(name: str, epochs: list[GraphEpoch], models: int) -> None:
        s = epoch_seconds(epochs)
        rows.append((name, s, models))
        base = rows[0][1]
        print(f"{name:45s} {s:.3f} s/epoch  {s / base:.2f}x one  ({models} models)", flush=True)
        torch.cuda.empty_cache()

    one = build(ds, 1)
    row("one model (graph)", [one], 1)
    if args.profile:
        profile(one)
    for k in args.sizes:
        stack = build(ds, k)
        row(f"stack of {k}", [stack], k)
    if args.profile:
        profile(stack)
    if args.streams:
        row("2 stacks of 4 on 2 streams", [build(ds, 4), build(ds, 4, seed0=4)], 8)
        row("8 single models on 8 streams", [build(ds, 1, seed0=i) for i in range(8)], 8)
        row("stack of 8, NCHW", [build(ds, 8, channels_last=False)], 8)
        fast.SIDE_STREAM_WEIGHT_GRADS = False
        row("stack of 8, weight grads on the main stream", [build(ds, 8)], 8)
        fast.SIDE_STREAM_WEIGHT_GRADS = True
    if args.compile:
        t = time.perf_counter()
        one = build(ds, 1, compile=True)
        print(f"compile one: {time.perf_counter() - t:.0f} s", flush=True)
        row("one model compiled", [one], 1)
        t = time.perf_counter()
        eight = build(ds, 8, compile=True)
        print(f"compile stack: {time.perf_counter() - t:.0f} s", flush=True)
        row("stack of 8 compiled", [eight], 8)
        if args.profile:
            profile(eight)


if __name__ == "__main__":
    main()
