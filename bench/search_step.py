"""One first-order BM-NAS search step (weight step on a train batch + architecture step on a val
batch) at the NTU configuration, timed side by side:

- `bmnas`: this implementation (arch gradient w.r.t. α, β, γ only; x = y ops computed once);
- `naive`: the same network stepped the way the official code does it (loss.backward() over all
  parameters in both steps, every op evaluated on (h, h) as two arguments);
each with and without the ReshapeInput layers (the official 227 ms/step reference excludes them).

NTU configuration: 8 input nodes, channels 512,1024,2048,2048,128,256,1024,512, T = 8; 2 Cells,
2 Steps, C = 128, L = 8, multiplier 2, 60 classes, batch 96.

    .venv/bin/python bench/search_step.py [--threads 2] [--steps 10] [--device cuda] [--compile] [--cudagraphs] [--ops]

`--compile` adds the bmnas step with the hypernet under torch.compile (what `search --compile`
runs), its compile time and its ratio to the eager step; `--device cuda` runs every row on the GPU.
`--cudagraphs` adds it with mode="reduce-overhead" (CUDA graphs on a GPU; each half-step marks a
new graph step), or the error it fails with. `--ops` counts the operators one step dispatches
(torch.profiler; views and scalar reads left out): on a GPU each is a kernel launch, so the count
is what a launch-bound step's time follows.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. On a shared machine (more runnable threads than
# cores) spinning threads steal the cores their partners need, and 2-thread steps take several times
# longer with the default (spinning) policy. Set it yourself to compare.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from fusion_search.architect import Architect  # noqa: E402
from fusion_search.training.engine import train_step  # noqa: E402
from fusion_search.found_network import FoundNetwork, count_parameters  # noqa: E402
from fusion_search.genotype import Genotype  # noqa: E402
from fusion_search.hypernet import Hypernet, HypernetSpec  # noqa: E402
from fusion_search.training.metrics import loss_fn  # noqa: E402
from fusion_search.primitives import Primitive  # noqa: E402

REFERENCE_MS = 227.0  # official implementation, per step, 2-core machine, without reshape layers
CHANNELS = [512, 1024, 2048, 2048, 128, 256, 1024, 512]
NODES = [f"video_{i}" for i in range(1, 5)] + [f"skeleton_{i}" for i in range(1, 5)]
C, L, T, K, B = 128, 8, 8, 60, 96
FIG5_LIKE = {  # a two-Cell NTU genotype in the shape of the paper's Fig. 5, for a parameter count
    "format": "bmnas-genotype", "version": 1, "task": "multiclass", "num_classes": K, "nodes": NODES,
    "C": C, "L": L, "multiplier": 2,
    "cells": [{"inputs": ["video_4", "skeleton_4"], "steps": [{"op": "ConcatFC", "inputs": [0, 1]},
                                                             {"op": "Attention", "inputs": [2, 1]}], "concat": [2, 3]},
              {"inputs": ["video_2", "cell_1"], "steps": [{"op": "LinearGLU", "inputs": [1, 0]},
                                                         {"op": "ConcatFC", "inputs": [2, 1]}], "concat": [2, 3]}],
    "output": ["cell_1", "cell_2"]}


DEVICE = torch.device("cpu")


def make(reshape: bool):
    shapes = {n: ((c if reshape else C), (T if reshape else L)) for n, c in zip(NODES, CHANNELS)}
    spec = HypernetSpec(nodes=tuple(NODES), node_shapes=shapes, task="multiclass", num_classes=K, cells=2, steps=2,
                        C=C, L=L, multiplier=2, step_inputs="sum", dropout=0.2, reshape=reshape)
    torch.manual_seed(0)
    model = Hypernet(spec).to(DEVICE)
    g = torch.Generator().manual_seed(1)

    def batch():
        return ({n: torch.randn(B, *shapes[n], generator=g).to(DEVICE) for n in NODES},
                torch.randint(0, K, (B,), generator=g).to(DEVICE))

    return model, batch(), batch()


def bmnas_halves(model, train, val):
    """The weight step on train and the architecture step on val, as the search runs them."""
    loss = lambda z, y: loss_fn("multiclass", z, y)  # noqa: E731
    w, a = model.weight_parameters(), model.arch_parameters()
    w_opt = torch.optim.Adam(w, lr=1e-3, weight_decay=3e-4, foreach=True)  # as the search builds them
    arch = Architect(model, a, w, torch.optim.Adam(a, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3, foreach=True),
                     loss)
    return (lambda: train_step(model, w, w_opt, loss, train, 5.0)), (lambda: arch.step(val))


def bmnas_step(model, train, val):
    weight_half, arch_half = bmnas_halves(model, train, val)

    def step():
        weight_half()
        arch_half()
    return step


def naive_step(model, train, val):
    w, a = model.weight_parameters(), model.arch_parameters()
    w_opt = torch.optim.Adam(w, lr=1e-3, weight_decay=3e-4)
    a_opt = torch.optim.Adam(a, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)

    def step():
        for opt, (x, y) in ((w_opt, train), (a_opt, val)):
            model.zero_grad(set_to_none=True)
            loss_fn("multiclass", model(x), y).backward()
            if opt is w_opt:
                torch.nn.utils.clip_grad_norm_(w, 5.0)
            opt.step()
    return step


def stepped(name: str, reshape: bool):
    """(hypernet, its step) of the bmnas or the naive kind."""
    model, train, val = make(reshape)
    return model, (bmnas_step if name == "bmnas" else naive_step)(model, train, val)


@contextlib.contextmanager
def ops_of(name: str):
    """The naive step evaluates every op on (h, h) as two arguments while the block runs."""
    same = Primitive.forward_same
    if name == "naive":
        Primitive.forward_same = lambda self, x: self(x, x)
    try:
        yield
    finally:
        Primitive.forward_same = same


def timed(step, n: int) -> tuple[float, float]:
    """(median, min) ms over n steps after 3 warm-up steps; min is the robust figure on a shared CPU."""
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)
    for _ in range(3):
        step()
    times = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, min(times) * 1000


VIEW_OPS = {"transpose", "select", "t", "reshape", "slice", "view", "expand", "split", "unsqueeze", "squeeze",
            "permute", "as_strided", "alias", "detach", "narrow", "unbind", "lift_fresh", "empty", "empty_like",
            "item", "_local_scalar_dense", "result_type", "to", "flatten", "_unsafe_view", "contiguous"}


def operator_counts(step) -> tuple[int, int]:
    """(operators, of which in optimiser steps) of one step: top-level aten ops that are not views."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    total = in_opt = 0
    for e in prof.events():
        parent = e.cpu_parent
        if not e.name.startswith("aten::") or e.name[6:] in VIEW_OPS or (parent and parent.name.startswith("aten::")):
            continue
        total += 1
        while parent is not None and not parent.name.startswith("Optimizer.step"):
            parent = parent.cpu_parent
        in_opt += parent is not None
    return total, in_opt


def ops_rows() -> None:
    """Operators per step, bmnas and naive, with reshape layers."""
    for name in ("bmnas", "naive"):
        model, step = stepped(name, True)
        with ops_of(name):
            total, in_opt = operator_counts(step)
        kind = "foreach" if name == "bmnas" or DEVICE.type == "cuda" else "one tensor at a time"
        print(f"{name} with reshape: {total} operators per step ({in_opt} in the optimiser steps, {kind})")


def compiled_row(args, eager_ms: float, mode: str | None = None) -> None:
    """The bmnas step (with reshape) through torch.compile: compile time (the first step), then timed.
    mode "reduce-overhead" (CUDA graphs on a GPU): each half-step begins a new graph step, so a
    replay never overwrites outputs the other half still holds; a failure is printed, not raised."""
    model, train, val = make(True)
    halves = bmnas_halves(torch.compile(model, mode=mode), train, val)

    def step():
        for half in halves:
            if mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            half()
    label = f"torch.compile{f' mode={mode}' if mode else ''}"
    try:
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        ms, best = timed(step, args.steps)
    except Exception as exc:  # noqa: BLE001 - the row reports what failed; the others stand
        print(f"bmnas with reshape, {label}: FAILED ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        return
    print(f"bmnas with reshape, {label}: {ms:7.1f} ms/step (min {best:6.1f}), compiled in {first:.0f} s; "
          f"{eager_ms / ms:.2f}x the eager step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    ap.add_argument("--ops", action="store_true", help="also count the operators (GPU kernels) of one step")
    ap.add_argument("--cudagraphs", action="store_true",
                    help="also time the compiled step with mode=reduce-overhead (CUDA graphs on a GPU)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"NTU config: 8 nodes, C={C}, L={L}, 2 cells x 2 steps, batch {B}, {K} classes; "
          f"{args.threads} threads, median (and min) of {args.steps} steps; load average {load} on {os.cpu_count()} CPUs; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    results = {}
    for reshape in (False, True):
        for name in ("bmnas", "naive"):
            model, step = stepped(name, reshape)
            with ops_of(name):
                ms, best = timed(step, args.steps)
            results[(name, reshape)] = ms
            params = sum(p.numel() for p in model.weight_parameters())
            label = "with reshape   " if reshape else "without reshape"
            print(f"{name:5s} {label}: {ms:7.1f} ms/step (min {best:6.1f})  {ms / B:6.3f} ms/sample  "
                  f"{REFERENCE_MS / ms:5.2f}x vs official {REFERENCE_MS:.0f} ms  ({params / 1e6:.2f} M hypernet weights)")
    for reshape in (False, True):
        print(f"bmnas vs naive {'with' if reshape else 'without'} reshape: "
              f"{results[('naive', reshape)] / results[('bmnas', reshape)]:.2f}x")
    if args.compile:
        compiled_row(args, results[("bmnas", True)])
    if args.cudagraphs:
        compiled_row(args, results[("bmnas", True)], mode="reduce-overhead")
    if args.ops:
        ops_rows()
    g = Genotype.from_dict(FIG5_LIKE)
    found = FoundNetwork(g, {n: (c, T) for n, c in zip(NODES, CHANNELS)})
    print(f"found network (Fig. 5-like NTU genotype): {count_parameters(found) / 1e6:.2f} M parameters "
          f"(paper: 0.98 M)")


if __name__ == "__main__":
    main()
