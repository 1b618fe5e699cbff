"""What runs inside an extraction task: cached frozen models, overlapped decoding, chunk writes.

Each process (dask worker or the driver with --no-dask) keeps its models in a module-level
cache, so a backbone is built and its checkpoint read once per worker, not once per task.
Decoding and input preparation run in a loader thread one batch ahead of the forward pass (the
samples of a batch read by `--decode-threads` threads in parallel), and
chunk writes in a writer thread, so both overlap the forward passes. All chunks of a call go
through one such pipeline; with --no-dask that is every chunk of the run, so nothing stalls
between chunks, and each chunk is reported as soon as its completion record is on disk.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from extract.backbones import BackboneSpec, InputSpec, TapSpec, resolve_backbone
from extract.backbones.taps import TapReader
from extract.checkpoints import inflate_checkpoint, load_checkpoint
from extract.cluster import on_worker
from extract.dtypes import unstorable
from extract.precision import memory_format
from extract.reduction import ReductionConfig
from stores import open_writer
from stores.device import host_of, usable_cores


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
    input: InputSpec = InputSpec()  # what each sample is prepared to (the setting's, with --input fields)
    peaks: tuple[float, ...] = ()  # largest |value| of each tap in the probe forward (--dtype auto decides by it)

    def spec(self) -> BackboneSpec:
        """The backbone declaration, resolved in this process (a dask worker resolves it once)."""
        return resolve_backbone(self.backbone, self.modality, tuple(t.name for t in self.taps))

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {n: (t.channels, ln) for n, t, ln in zip(self.nodes, self.taps, self.lengths)}


PRECISIONS = ("float32", "float16")


@dataclass(frozen=True)
class Placement:
    """Where each worker runs its models, and in which compute precision: decided once by the driver
    from the workers' own view of their GPUs (`extract.job.place`), then handed to every call.

    `devices` maps a dask worker address ("" for this process without dask) to "cpu" or "cuda:i";
    `precision` "float16" runs the forward under autocast (weights and inputs stay float32).
    """

    devices: tuple[tuple[str, str], ...]
    precision: str = "float32"

    def device_for(self, address: str) -> torch.device:
        """This worker's device; a worker that joined after the plan takes cuda:0 (or the CPU)."""
        plan = dict(self.devices)
        if address in plan:
            return torch.device(plan[address])
        return torch.device("cuda", 0) if any(v.startswith("cuda") for v in plan.values()) else torch.device("cpu")


AUTO = "auto"  # --decode-threads auto


def decode_threads_for(requested: int | str, device: torch.device, address: str, placement: Placement,
                       cores: int) -> int:
    """The loader threads of one worker: as given, or for `auto` the cores of its host shared among
    the host's workers when its forward runs on a GPU (the cores then only read and prepare samples,
    and a fast GPU needs many of them), and 1 on a CPU worker (its cores run the forward)."""
    if requested != AUTO:
        return int(requested)
    if device.type != "cuda":
        return 1
    peers = {a for a, _ in placement.devices if host_of(a) == host_of(address)} | {address}
    return max(1, cores // len(peers))


@dataclass
class _Loaded:
    model: torch.nn.Module
    reader: TapReader
    device: torch.device
    fp16: bool  # forward under float16 autocast
    lock: threading.Lock
    layout: torch.memory_format | None = None  # channels_last_3d where measured faster (extract.precision)

    def prepared(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on this model's device, in its layout."""
        x = x.to(self.device)
        return x.contiguous(memory_format=self.layout) if self.layout is not None and x.dim() == 5 else x


_MODELS: dict[tuple, _Loaded] = {}
_MODELS_LOCK = threading.Lock()
LOADS = {"count": 0}  # models built in this process (tests check "once per worker")
INIT_SEED = 0  # weights of a backbone run without a checkpoint: the same in every process


def worker_address(dask_worker: Any = None) -> str:
    """This process's dask worker address; "" outside a dask task (or `client.run` without its worker)."""
    if dask_worker is not None:
        return str(dask_worker.address)
    if "distributed" not in sys.modules:
        return ""
    from distributed import get_worker

    try:
        return str(get_worker().address)
    except ValueError:
        return ""


def get_model(entry: Entry, reduction: ReductionConfig, device: torch.device, precision: str = "float32",
              layout: torch.memory_format | None = None) -> _Loaded:
    """The frozen, eval-mode model of an entry on a resolved device in this process, built on first use.

    Keyed by the resolved device: the same worker never reuses a model built for another GPU.
    `layout`: a memory format for weights and 5-D inputs (default: `extract.precision.memory_format`)."""
    layout = layout if layout is not None else memory_format(entry.backbone, entry.setting, device)
    key = (entry, reduction, str(device), precision, layout)
    with _MODELS_LOCK:
        if key not in _MODELS:
            spec = entry.spec()
            example = torch.zeros(entry.input_shape, dtype=getattr(torch, entry.input_dtype))  # sizes lazy layers
            model = spec.build(entry.setting, entry.num_classes, entry.modality, entry.input_dim, seed=INIT_SEED,
                               example=example)
            if entry.checkpoint:
                load = inflate_checkpoint if entry.inflate else load_checkpoint
                load(model, entry.checkpoint, head=spec.head)
            if device.type == "cuda":
                torch.cuda.set_device(device)  # stray allocations land on this worker's GPU, not cuda:0
            model = model.to(device).eval()
            if layout is not None:  # the 5-D weights (3-D convolutions) only: `Module.to` refuses the others
                for p in model.parameters():
                    if p.dim() == 5:
                        p.data = p.data.contiguous(memory_format=layout)
            for p in model.parameters():
                p.requires_grad_(False)
            _MODELS[key] = _Loaded(model, TapReader(model, list(entry.taps), reduction), device,
                                   precision == "float16", threading.Lock(), layout)
            LOADS["count"] += 1
        return _MODELS[key]


def warm_up(entries: tuple[Entry, ...], reduction: ReductionConfig, placement: Placement, batch_size: int = 0,
            dask_worker: Any = None) -> str:
    """Import, build and run every model once on this worker before tasks arrive; returns its device.

    `dask_worker` is filled in by `client.run`, where `get_worker()` does not work."""
    device = placement.device_for(worker_address(dask_worker))
    for e in entries:
        lm = get_model(e, reduction, device, placement.precision)
        if e.input_shape and batch_size:  # first forward at the batch shape sets up kernels: not timed
            x = lm.prepared(torch.zeros((batch_size,) + e.input_shape, dtype=getattr(torch, e.input_dtype)))
            with lm.lock, torch.inference_mode(), _autocast(lm):
                lm.reader.run(x)
    import decord  # noqa: F401  - first import costs seconds on a busy machine

    return str(device)


def _autocast(lm: _Loaded) -> torch.autocast:
    """float16 autocast for the forward when asked: convolutions and matmuls run in float16, while
    elementwise input preparation inside a model (HCN's frame-to-frame motion, BatchNorm of the
    raw coordinates) stays in float32, which `.half()` on model and input would not keep."""
    return torch.autocast(lm.device.type, dtype=torch.float16, enabled=lm.fp16)


def _load_rows(source: Any, ids: list[str], entries: tuple[Entry, ...],
               decoders: ThreadPoolExecutor | None = None) -> tuple[list[int], dict, list[dict]]:
    """Read and prepare every modality of some samples, each modality stacked into one batch tensor.

    Returns the readable rows (offsets into ``ids``), modality -> batch tensor, and skip records
    for the rest. Stacking here, in the loader thread, keeps the batch tensors' allocations and
    frees in one thread (and arena): handed across threads one by one, they would page-fault the
    forward pass's memory afresh. `decoders` (--decode-threads above 1) reads and prepares the
    samples in parallel (decord releases the GIL while it decodes), in order.
    """
    specs = {e.modality: (e.spec(), e.input) for e in entries}
    one = functools.partial(_load_one, source, specs)
    loaded = list(decoders.map(one, enumerate(ids)) if decoders is not None else map(one, enumerate(ids)))
    good = {row: got for row, got, _ in loaded if got}
    errors = [err for _, _, err in loaded if err is not None]
    rows = sorted(good)
    inputs = {m: torch.stack([good[r][m] for r in rows]) for m in specs} if rows else {}
    return rows, inputs, errors


def _load_one(source: Any, specs: dict[str, tuple[Any, Any]],
              item: tuple[int, str]) -> tuple[int, dict[str, torch.Tensor], dict | None]:
    """One sample's prepared inputs, or its skip record (the first modality that failed)."""
    row, sid = item
    got: dict[str, torch.Tensor] = {}
    for modality, (spec, inp) in specs.items():
        try:
            got[modality] = spec.prepare_input(source.read(sid, modality), modality, inp)
        except Exception as exc:  # noqa: BLE001 - any read/decode failure is this sample's
            try:
                path = source.path_of(sid, modality)
            except Exception:  # noqa: BLE001
                path = "?"
            return row, {}, {"row": row, "id": sid, "path": str(path), "modality": modality,
                             "reason": f"{type(exc).__name__}: {exc}".strip()}
    return row, got, None


def _forward(entries, loaded_by_entry, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Run each backbone on its modality's batch; returns node -> (rows, C, T) float32."""
    feats: dict[str, np.ndarray] = {}
    for entry in entries:
        lm = loaded_by_entry[entry]
        x = lm.prepared(inputs[entry.modality])
        with lm.lock, torch.inference_mode(), _autocast(lm):
            taps = lm.reader.run(x)
        for tap, node in zip(entry.taps, entry.nodes):
            feats[node] = taps[tap.name].numpy()
    return feats


def _unstorable(entries: tuple[Entry, ...], feats: dict[str, np.ndarray], dtypes: dict[str, str],
                ids: list[str]) -> dict | None:
    """The first node of a batch whose values are not finite in its store dtype (`ids`: the batch's
    readable samples), checked before the chunk can be written."""
    for entry in entries:
        for tap, node in zip(entry.taps, entry.nodes):
            rec = unstorable(node, f"{tap.name} of {entry.backbone}", feats[node], dtypes[node], ids)
            if rec is not None:
                return rec
    return None


@dataclass
class ChunkResult:
    """What one chunk's extraction reports to the job (plain fields: it crosses dask).

    `failed` is the unreadable sample that stopped the chunk under --on-error fail (a record like
    `skipped`'s: id, path, modality, reason, row); `unstorable` the batch whose features hold NaN/Inf
    in their node's store dtype (`extract.dtypes.unstorable`), which stops the run whatever --on-error
    says; `task_error` says why a whole dask task failed (a worker died or a bug) when no chunk could
    report for itself."""

    chunk: int
    rows: int
    seconds: float
    skipped: list[dict] = field(default_factory=list)
    failed: dict | None = None
    unstorable: dict | None = None
    task_error: str | None = None
    pid: int = 0
    models_built: int = 0
    worker: str = ""
    device: str = ""

    @property
    def ok(self) -> bool:
        return self.failed is None and self.unstorable is None and self.task_error is None


class _Chunk:
    """One row chunk filling up batch by batch; rows of unreadable samples stay NaN, never zero."""

    def __init__(self, k: int, rows: slice, shapes: dict[str, tuple[int, int]]) -> None:
        self.k, self.rows, self.t0 = k, rows, time.perf_counter()
        self.data = {n: np.full((rows.stop - rows.start,) + s, np.nan, np.float32) for n, s in shapes.items()}
        self.skipped: list[dict] = []
        self.failed: dict | None = None
        self.unstorable: dict | None = None

    @property
    def stopped(self) -> bool:
        """Whether this chunk must not be written (an unreadable sample under fail, or unstorable values)."""
        return self.failed is not None or self.unstorable is not None

    def note_errors(self, errors: list[dict], start: int, on_error: str) -> None:
        """Record a batch's unreadable samples (row numbers relative to the batch start)."""
        for err in errors:
            err = dict(err, row=start + err["row"])
            if on_error == "fail":
                self.failed = err
            else:
                self.skipped.append(err)

    def put(self, start: int, rows: list[int], feats: dict[str, np.ndarray]) -> None:
        """Features of a batch's readable ``rows`` (offsets from the batch ``start``)."""
        local = np.asarray(rows) + (start - self.rows.start)
        for n, arr in self.data.items():
            arr[local] = feats[n]

    def result(self, where: tuple[str, str] = ("", "")) -> "ChunkResult":
        """The chunk's record; `where` is (worker address, device) for the extraction summary."""
        res = ChunkResult(self.k, self.rows.stop - self.rows.start, time.perf_counter() - self.t0,
                          skipped=[] if self.stopped else self.skipped, failed=self.failed,
                          unstorable=self.unstorable)
        if not self.stopped:
            res.pid, res.models_built = os.getpid(), LOADS["count"]
            res.worker, res.device = where[0] or "local", where[1]
        return res


class _Results:
    """Chunk results, handed to ``on_chunk`` as they complete (``--no-dask``) or kept for the task."""

    def __init__(self, on_chunk: Callable[[ChunkResult], bool | None] | None) -> None:
        self.on_chunk, self.kept, self.stopped = on_chunk, [], False

    def add(self, res: ChunkResult) -> None:
        if self.on_chunk is None:
            self.kept.append(res)
        elif self.on_chunk(res) is False:
            self.stopped = True


class _Writes:
    """Chunk writes in a writer thread, overlapping the next forward passes; a chunk's result is
    given only once its data and completion record are on disk. At most ``depth`` chunks wait."""

    def __init__(self, writer: Any, results: _Results, depth: int = 2) -> None:
        self.writer, self.results, self.depth = writer, results, depth
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmnas-write")
        self.pending: list[tuple[Future, ChunkResult]] = []
        self.error: Exception | None = None

    def submit(self, chunk: _Chunk, where: tuple[str, str]) -> None:
        while len(self.pending) >= self.depth:
            self._finish_oldest()
        self.pending.append((self.pool.submit(self.writer.write_chunk, chunk.k, chunk.data), chunk.result(where)))

    def poll(self) -> None:
        """Report the chunks whose writes are done, in order, without waiting."""
        while self.pending and self.pending[0][0].done():
            self._finish_oldest()

    def close(self) -> None:
        """Wait for every write; a failed write raises here, after the others have finished."""
        while self.pending:
            self._finish_oldest()
        self.pool.shutdown(wait=True)
        if self.error is not None:
            raise self.error

    def _finish_oldest(self) -> None:
        fut, res = self.pending.pop(0)
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001 - kept; close() raises it
            self.error = self.error or exc
            return
        self.results.add(res)


def _prefetched(plans: list[tuple], load: Callable[[tuple], Any]) -> Iterator[tuple[tuple, Any]]:
    """Yield ``(plan, load(plan))``, the next plan's load already running in a loader thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmnas-decode") as pool:
        pending = pool.submit(load, plans[0]) if plans else None
        for i, plan in enumerate(plans):
            got = pending.result()
            pending = pool.submit(load, plans[i + 1]) if i + 1 < len(plans) else None
            yield plan, got


def _batch_plans(writer: Any, chunks: list[int], batch_size: int) -> list[tuple[int, slice, int, int]]:
    """(chunk, its rows, batch start, batch stop) for every batch, chunk by chunk."""
    plans = []
    for k in chunks:
        rows = writer.chunk_rows(k)
        plans += [(k, rows, a, min(a + batch_size, rows.stop)) for a in range(rows.start, rows.stop, batch_size)]
    return plans


def run_chunks(source: Any, store_path: str, sample_ids: list[str], chunks: list[int],
               entries: tuple[Entry, ...], reduction: ReductionConfig, placement: Placement, batch_size: int,
               on_error: str, decode_threads: int | str = 1,
               on_chunk: Callable[[ChunkResult], bool | None] | None = None) -> list[ChunkResult]:
    """Extract and write some row chunks through one pipeline (decode ahead, write behind).

    One `ChunkResult` per chunk (skips, failure, seconds): passed to ``on_chunk`` as each chunk
    lands when given (returning False stops the pipeline), else returned at the end. With
    on_error="fail" a chunk holding an unreadable sample is not written and its result carries
    the failure; so is a chunk whose features are not finite in their node's store dtype, whatever
    on_error says. Chunks after it are not started.
    """
    on_worker()
    writer = open_writer(store_path)
    address = worker_address()
    device = placement.device_for(address)
    where = (address, str(device))
    loaded = {e: get_model(e, reduction, device, placement.precision) for e in entries}
    shapes = {n: s for e in entries for n, s in e.shapes().items()}
    dtypes = writer.node_dtypes()
    results = _Results(on_chunk)
    writes = _Writes(writer, results)
    decode_threads = decode_threads_for(decode_threads, device, address, placement, usable_cores())
    decoders = ThreadPoolExecutor(decode_threads, thread_name_prefix="bmnas-read") if decode_threads > 1 else None
    batches = _prefetched(_batch_plans(writer, chunks, batch_size),
                          lambda plan: _load_rows(source, sample_ids[plan[2]:plan[3]], entries, decoders))
    chunk: _Chunk | None = None
    try:
        for (k, rows, a, b), (good, inputs, errors) in batches:
            chunk = chunk or _Chunk(k, rows, shapes)
            chunk.note_errors(errors, a, on_error)
            if good and not chunk.stopped:
                feats = _forward(entries, loaded, inputs)
                chunk.unstorable = _unstorable(entries, feats, dtypes, [sample_ids[a + r] for r in good])
                chunk.put(a, good, feats)
            if chunk.stopped:
                results.add(chunk.result())
                break
            if b == rows.stop:  # chunk done: its data, then its completion record, in the writer thread
                writes.submit(chunk, where)
                chunk = None
            writes.poll()
            if results.stopped or writes.error:
                break
    finally:
        batches.close()  # waits for the batch being decoded
        if decoders is not None:
            decoders.shutdown()
        writes.close()
    return results.kept
