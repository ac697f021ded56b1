"""GPU speed benchmark for CIFAR-10-LT (ResNet-32, batch 128, the LDAM-DRW recipe), one invocation.

    python benchmarks/gpu.py                       # everything below, on the GPU
    python benchmarks/gpu.py --skip-reference --seeds 0 1 2

Prints: JPEG decode time; s/epoch of a reference-style pipeline (PIL images, CPU transforms, a
DataLoader with workers, fp32, ``.item()`` every step — as in the public LDAM-DRW code), of our eager
loop and of our CUDA-graph loop, with ratios; full 200-epoch runs (wall seconds from cached arrays
to saved run, balanced accuracy of the last epoch); peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import numpy as np
import torch

from ltlib import fast
from ltlib.data import load_dataset, make_long_tailed
from ltlib.presets import preset
from ltlib.train import train


def reference_epoch_seconds(ds, epochs: int, workers: int) -> float:
    """s/epoch (median after the first) of a DataLoader pipeline in the style of the public LDAM-DRW code."""
    import torchvision.transforms as T
    from PIL import Image

    from ltlib.models import build_model

    lt = make_long_tailed(ds, 100)
    images = lt.x_train.permute(0, 2, 3, 1).numpy()
    labels = lt.y_train.numpy()
    tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        ]
    )

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return tf(Image.fromarray(images[i])), int(labels[i])

    loader = torch.utils.data.DataLoader(
        Images(), batch_size=128, shuffle=True, num_workers=workers, pin_memory=True, persistent_workers=True
    )
    model = build_model("resnet32", (3, 32, 32), 10).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        for x, y in loader:
            x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def epoch_seconds(engine: str, epochs: int, **kw) -> float:
    """s/epoch of our loop (median over epochs after the first, evaluation off)."""
    stamps = []
    cfg = preset("cifar10-lt", epochs=epochs, eval_every=10_000, engine=engine, **kw)
    train(cfg, callbacks=[lambda e: e.kind == "epoch" and stamps.append(time.perf_counter())], save=False)
    return float(np.median(np.diff(stamps)))


def eight_at_once(methods: dict[str, dict], epochs: int, compile: bool, streams: bool) -> dict:
    """Wall time of one run, then of eight configs (4 methods × 2 seeds) trained together by ltlib.sweep:
    as model-stacks (the default), and with ``streams`` also each on its own stream (``stack=False``)."""
    from ltlib.sweep import train_many

    variants = [methods["ce"], methods["balanced_softmax"], methods["ldam-drw"], {"sampler": "class_balanced"}]
    configs = [preset("cifar10-lt", epochs=epochs, seed=s, compile=compile, **v) for v in variants for s in (0, 1)]
    root = os.environ.get("OUT", "runs")
    # Not timed: the process's first run pays CUDA and cuDNN start-up (and, compiled, the backbone's compile).
    train_many([replace(configs[0], epochs=1)], save=False)
    row: dict = {"epochs": epochs, "compile": compile}
    for name, subset, kw in [("one", configs[:1], {}), ("eight", configs, {}), ("eight_streams", configs, {"stack": False})]:
        if name == "eight_streams" and not streams:
            continue
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        results = train_many(subset, root=root, **kw)
        wall = time.perf_counter() - t
        metas = [json.loads((r.path / "meta.json").read_text()) for r in results]
        warm_up = max(m.get("warm_up_seconds", 0.0) for m in metas)  # the runs warm up one after another; the stack once
        row[name] = {
            "wall_s": wall,
            "warm_up_s": warm_up,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
            "balanced_accuracy": [r.eval["balanced_accuracy"] for r in results],
            "engine_note": metas[0]["engine_note"],
        }
        ratio = "" if name == "one" else f" ({wall / row['one']['wall_s']:.2f}x one)"
        accs = ", ".join(f"{100 * a:.1f}" for a in row[name]["balanced_accuracy"])
        print(
            f"{name} (compile={compile}, {epochs} epochs): {wall:.1f} s{ratio}, warm-up {warm_up:.1f} s, peak {row[name]['peak_gpu_gib']:.2f} GiB; "
            f"balanced acc {accs}; {metas[0]['engine_note']}",
            flush=True,
        )
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--methods", nargs="*", default=["ce", "ldam-drw"])
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-epochs", action="store_true")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--compile", action="store_true", help="full runs with torch.compile inside the graph")
    p.add_argument("--variants", action="store_true", help="also time the graph loop without channels-last and with torch.compile")
    p.add_argument("--eight", action="store_true", help="eight configurations trained together (ltlib.sweep) vs one")
    p.add_argument("--eight-epochs", type=int, default=200)
    p.add_argument("--eight-streams", action="store_true", help="also the eight each on its own stream, not stacked")
    p.add_argument("--json", help="append results to this JSON-lines file")
    args = p.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}

    t = time.perf_counter()
    ds = load_dataset("cifar10")
    out["load_seconds"] = time.perf_counter() - t
    print(f"dataset load (decode or cache) {out['load_seconds']:.1f} s", flush=True)

    if not args.skip_reference:
        out["reference_s_per_epoch"] = reference_epoch_seconds(ds, 4, args.workers)
        print(f"reference DataLoader pipeline: {out['reference_s_per_epoch']:.3f} s/epoch", flush=True)
    if not args.skip_epochs:
        out["eager_s_per_epoch"] = epoch_seconds("eager", 4)
        print(f"ltlib eager loop:             {out['eager_s_per_epoch']:.3f} s/epoch", flush=True)
        out["graph_s_per_epoch"] = epoch_seconds("graph", 6)
        print(f"ltlib CUDA-graph loop:        {out['graph_s_per_epoch']:.3f} s/epoch", flush=True)
        if args.variants:
            for steps in (1, 16, 1000):
                fast.STEPS_PER_GRAPH = steps
                out[f"graph_{steps}_steps_per_graph_s_per_epoch"] = epoch_seconds("graph", 6)
                print(f"  … {steps} steps per graph:      {out[f'graph_{steps}_steps_per_graph_s_per_epoch']:.3f} s/epoch", flush=True)
            fast.STEPS_PER_GRAPH = 4
            fast.SIDE_STREAM_WEIGHT_GRADS = False
            out["graph_one_stream_s_per_epoch"] = epoch_seconds("graph", 6)
            fast.SIDE_STREAM_WEIGHT_GRADS = True
            print(f"  … weight grads on the main stream: {out['graph_one_stream_s_per_epoch']:.3f} s/epoch", flush=True)
            out["graph_nchw_s_per_epoch"] = epoch_seconds("graph", 6, channels_last=False)
            print(f"  … without channels-last:    {out['graph_nchw_s_per_epoch']:.3f} s/epoch", flush=True)
            t = time.perf_counter()
            out["graph_compiled_s_per_epoch"] = epoch_seconds("graph", 6, compile=True)
            print(
                f"  … with torch.compile:       {out['graph_compiled_s_per_epoch']:.3f} s/epoch ({time.perf_counter() - t:.0f} s incl. compile)",
                flush=True,
            )

    methods = {"ce": {}, "ldam-drw": {"loss": "ldam", "schedule": "drw"}, "balanced_softmax": {"loss": "balanced_softmax"}}
    out["runs"] = []
    for name in args.methods:
        for seed in args.seeds:
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            result = train(preset("cifar10-lt", seed=seed, compile=args.compile, **methods[name]), root=os.environ.get("OUT", "runs"))
            wall = time.perf_counter() - t
            meta = json.loads((result.path / "meta.json").read_text())
            times = [json.loads(line)["time"] for line in (result.path / "metrics.jsonl").read_text().splitlines()]
            print(
                f"  epoch timeline: first epoch ends at {times[0]:.1f} s, last at {times[-1]:.1f} s, slowest epoch {max(np.diff(times)):.2f} s, median {np.median(np.diff(times)):.3f} s",
                flush=True,
            )
            row = {
                "method": name,
                "seed": seed,
                "wall_s": wall,
                "setup_s": meta["setup_seconds"],
                "warm_up_s": meta.get("warm_up_seconds", 0.0),
                "balanced_accuracy": result.eval["balanced_accuracy"],
                "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
                "engine": meta["engine"],
            }
            out["runs"].append(row)
            print(
                f"full run {name} seed {seed}: {wall:.1f} s, {wall - row['warm_up_s']:.1f} s without the warm-up (set-up {row['setup_s']:.1f} s of which warm-up {row['warm_up_s']:.1f} s), balanced accuracy {100 * row['balanced_accuracy']:.2f} %, peak {row['peak_gpu_gib']:.2f} GiB, engine {row['engine']}",
                flush=True,
            )

    if args.eight:
        out["eight"] = eight_at_once(methods, args.eight_epochs, args.compile, args.eight_streams)

    if "reference_s_per_epoch" in out and "graph_s_per_epoch" in out:
        print(f"speed-up per epoch, graph vs reference: {out['reference_s_per_epoch'] / out['graph_s_per_epoch']:.1f}x")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
