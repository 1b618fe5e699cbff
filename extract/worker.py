"""What runs inside an extraction task: cached frozen models, overlapped decoding, chunk writes.

Each process (dask worker or the driver with --no-dask) keeps its models in a module-level
cache, so a backbone is built and its checkpoint read once per worker, not once per task.
Decoding and input preparation run in a loader thread one batch ahead of the forward pass, and
chunk writes in a writer thread, so both overlap the forward passes.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from extract.backbones import TapSpec, get_backbone
from extract.backbones.taps import TapReader
from extract.checkpoints import inflate_checkpoint, load_checkpoint
from extract.reduction import ReductionConfig


@dataclass(frozen=True)
class Entry:
    """One backbone on one modality, resolved: its taps and the store nodes they fill."""

    modality: str
    backbone: str
    setting: str
    checkpoint: str | None
    taps: tuple[TapSpec, ...]
    nodes: tuple[str, ...]
    num_classes: int
    input_dim: int | None
    lengths: tuple[int, ...]  # cached T of each node, from the probe forward
    input_shape: tuple[int, ...] = ()  # one prepared sample's shape (warm-up forward)
    input_dtype: str = "float32"
    inflate: bool = False  # checkpoint is a 2D ResNet-50 state_dict to centre-inflate

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {n: (t.channels, ln) for n, t, ln in zip(self.nodes, self.taps, self.lengths)}


@dataclass
class _Loaded:
    model: torch.nn.Module
    reader: TapReader
    device: torch.device
    half: bool
    lock: threading.Lock


_MODELS: dict[tuple, _Loaded] = {}
_MODELS_LOCK = threading.Lock()
LOADS = {"count": 0}  # models built in this process (tests check "once per worker")
INIT_SEED = 0  # weights of a backbone run without a checkpoint: the same in every process


def resolve_device(device: str) -> torch.device:
    """auto -> cuda when available; on a dask worker with several GPUs, one GPU per worker."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        index = 0
        try:
            from distributed import get_worker

            name = str(get_worker().name)
            index = int(name.rsplit("-", 1)[-1]) if name.rsplit("-", 1)[-1].isdigit() else 0
        except (ImportError, ValueError):
            pass
        return torch.device("cuda", index % max(1, torch.cuda.device_count()))
    return torch.device(device)


def get_model(entry: Entry, reduction: ReductionConfig, device: str) -> _Loaded:
    """The frozen, eval-mode model of an entry in this process, built on first use."""
    key = (entry, reduction, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            spec = get_backbone(entry.backbone)
            model = spec.build(entry.setting, entry.num_classes, entry.modality, entry.input_dim, seed=INIT_SEED)
            if entry.checkpoint:
                load = inflate_checkpoint if entry.inflate else load_checkpoint
                load(model, entry.checkpoint, head=spec.head)
            dev = resolve_device(device)
            half = dev.type == "cuda"
            model = model.to(dev).eval()
            if half:
                model = model.half()
            for p in model.parameters():
                p.requires_grad_(False)
            _MODELS[key] = _Loaded(model, TapReader(model, list(entry.taps), reduction), dev, half,
                                   threading.Lock())
            LOADS["count"] += 1
        return _MODELS[key]


def warm_up(entries: tuple[Entry, ...], reduction: ReductionConfig, device: str, batch_size: int = 0) -> int:
    """Import, build and run every model once on this worker before tasks arrive; returns the pid."""
    for e in entries:
        lm = get_model(e, reduction, device)
        if e.input_shape and batch_size:  # first forward at the batch shape sets up kernels: not timed
            x = torch.zeros((batch_size,) + e.input_shape, dtype=getattr(torch, e.input_dtype), device=lm.device)
            if lm.half and x.is_floating_point():
                x = x.half()
            with lm.lock, torch.inference_mode():
                lm.reader.run(x)
    import decord  # noqa: F401  - first import costs seconds on a busy machine
    import stores  # noqa: F401

    return os.getpid()


def _load_rows(source: Any, ids: list[str], entries: tuple[Entry, ...]) -> tuple[dict, list[dict]]:
    """Read and prepare every modality of some samples; failures become skip records."""
    specs = {e.modality: (get_backbone(e.backbone), e.setting) for e in entries}
    out: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    errors: list[dict] = []
    for row, sid in enumerate(ids):
        got: dict[str, torch.Tensor] = {}
        for modality, (spec, setting) in specs.items():
            try:
                got[modality] = spec.prepare_input(source.load(sid, modality), modality, setting)
            except Exception as exc:  # noqa: BLE001 - any read/decode failure is this sample's
                try:
                    path = source.path_of(sid, modality)
                except Exception:  # noqa: BLE001
                    path = "?"
                errors.append({"row": row, "id": sid, "path": str(path), "modality": modality,
                               "reason": f"{type(exc).__name__}: {exc}".strip()})
                got = {}
                break
        if got:
            out[row] = got
    return out, errors


def _forward(entries, loaded_by_entry, batch: dict[int, dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Run each backbone on the good rows of a batch; returns node -> (rows, C, T) float32."""
    rows = sorted(batch)
    feats: dict[str, np.ndarray] = {}
    for entry in entries:
        lm = loaded_by_entry[entry]
        x = torch.stack([batch[r][entry.modality] for r in rows]).to(lm.device)
        if lm.half and x.is_floating_point():  # token ids stay integers
            x = x.half()
        with lm.lock, torch.inference_mode():
            taps = lm.reader.run(x)
        for tap, node in zip(entry.taps, entry.nodes):
            feats[node] = taps[tap.name].numpy()
    return feats


def run_chunks(source: Any, store_path: str, sample_ids: list[str], chunks: list[int],
               entries: tuple[Entry, ...], reduction: ReductionConfig, device: str, batch_size: int,
               on_error: str) -> list[dict]:
    """Extract and write some row chunks; one result dict per chunk (skips, failure, seconds).

    With on_error="fail" a chunk holding an unreadable sample is not written and its result
    carries the failure; chunks after it in this task are not started.
    """
    from stores import open_writer

    try:  # on a dask worker: torch uses as many threads as the worker has
        from distributed import get_worker

        torch.set_num_threads(max(1, get_worker().state.nthreads))
    except (ImportError, ValueError):
        pass
    writer = open_writer(store_path)
    loaded = {e: get_model(e, reduction, device) for e in entries}
    nodes = [n for e in entries for n in e.nodes]
    plans = []
    for k in chunks:
        rows = writer.chunk_rows(k)
        for start in range(rows.start, rows.stop, batch_size):
            plans.append((k, rows, start, min(start + batch_size, rows.stop)))

    def load(plan):
        _k, _rows, a, b = plan
        return _load_rows(source, sample_ids[a:b], entries)

    results: list[dict] = []  # only a failed chunk's result lands here
    writes: list[tuple] = []
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmnas-decode")
    write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmnas-write")
    try:
        it: Iterator = iter(plans)
        pending = pool.submit(load, next(it)) if plans else None
        current: dict | None = None
        for i, plan in enumerate(plans):
            k, rows, a, b = plan
            batch, errors = pending.result()
            nxt = plans[i + 1] if i + 1 < len(plans) else None
            pending = pool.submit(load, nxt) if nxt is not None else None
            if current is None or current["chunk"] != k:
                current = {"chunk": k, "rows": rows.stop - rows.start, "skipped": [], "failed": None,
                           "t0": time.perf_counter(),
                           "data": {n: None for n in nodes}}
            for err in errors:
                err = dict(err, row=a + err["row"])
                if on_error == "fail":
                    current["failed"] = err
                else:
                    current["skipped"].append(err)
            if current["failed"]:
                results.append({"chunk": k, "rows": current["rows"], "skipped": [], "failed": current["failed"],
                                "seconds": time.perf_counter() - current["t0"]})
                break
            if batch:
                feats = _forward(entries, loaded, batch)
                local = np.asarray(sorted(batch)) + (a - rows.start)
                for n in nodes:
                    if current["data"][n] is None:
                        c, t = feats[n].shape[1:]
                        current["data"][n] = np.full((rows.stop - rows.start, c, t), np.nan, np.float32)
                    current["data"][n][local] = feats[n]
            if b == rows.stop:  # chunk done: data, then its completion record
                data = current["data"]
                if any(v is None for v in data.values()):  # every sample of the chunk unreadable
                    shapes = {n: s for e in entries for n, s in e.shapes().items()}
                    data = {n: np.full((rows.stop - rows.start,) + shapes[n], np.nan, np.float32) for n in nodes}
                # the write (compression, files, then the completion record) overlaps the next chunk
                writes.append((write_pool.submit(writer.write_chunk, k, data),
                               {"chunk": k, "rows": current["rows"], "skipped": current["skipped"],
                                "failed": None, "seconds": time.perf_counter() - current["t0"],
                                "pid": os.getpid(), "models_built": LOADS["count"]}))
                current = None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        write_pool.shutdown(wait=True)

    for fut, res in writes:
        fut.result()  # a failed write raises here, after every other chunk's write has finished
    return [res for _, res in writes] + results

