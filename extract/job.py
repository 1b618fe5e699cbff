"""The extraction stage: backbones over a source into one feature store, as dask tasks.

Work is split into chunk-aligned tasks (``chunks_per_task`` row chunks each). Tasks run on a
LocalCluster by default, on an existing cluster with ``scheduler=ADDRESS`` (the store must then
be on storage every worker sees), or in this process with ``use_dask=False`` (then every chunk
goes through one decode/forward/write pipeline, reported chunk by chunk). At most as many
tasks as worker threads are in flight, so on a failure (``on_error="fail"``) no new task starts
and those already under way finish and keep their chunks. Rerunning resumes: chunks with a
completion record are skipped, except chunks holding skipped samples, which are retried.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from extract.backbones import BackboneSpec, InputSpec, get_module, resolve_backbone
from extract.backbones.taps import TapReader
from extract.checkpoints import inflate_checkpoint, load_checkpoint, sha256_weights
from extract.cluster import connect
from extract.errors import BackboneError, DataError, ExtractError
from extract.config import ExtractConfig, ReductionConfig
from extract.dtypes import DTYPE_CHOICES, choose_dtype, peak_magnitude, unstorable_message
from extract.precision import auto_precision
from extract.worker import AUTO, INIT_SEED, PRECISIONS, ChunkResult, Entry, Placement, run_chunks, warm_up
from stores import NodeSpec, StoreError, create_store, is_bmnas_store, open_writer
from stores.device import DEVICES, gpu_slot
from stores.files import disk_full
from stores.lock import holds_lock

ON_ERROR = ("fail", "skip")


@dataclass(frozen=True)
class BackboneChoice:
    """A backbone to run on one modality: its spec (a registry name, ``hf:DIR`` or
    ``package.module:callable``), setting, optional local checkpoint, optional taps and input fields."""

    modality: str
    backbone: str
    setting: str = "full"
    checkpoint: str | None = None
    taps: tuple[str, ...] | None = None
    inflate: bool = False  # checkpoint holds 2D ResNet-50 weights to inflate (inflated_resnet50 only)
    input: tuple[tuple[str, Any], ...] = ()  # --input fields replacing the backbone's default preparation

    def resolve(self) -> tuple[BackboneSpec, InputSpec]:
        """The backbone declaration this choice names, and the input its samples are prepared to."""
        spec = resolve_backbone(self.backbone, self.modality, self.taps)
        return spec, spec.input_for(self.setting, dict(self.input))


@dataclass
class ExtractResult:
    """What a run did: rows extracted now, chunks skipped as done, skip records, speed and size."""

    store: str
    nodes: dict[str, tuple[int, int]]
    chunks_total: int
    chunks_run: int
    rows_run: int
    seconds: float
    samples_per_s: float
    bytes_on_disk: int
    bytes_raw: int
    skipped: list[dict] = field(default_factory=list)
    models_built: dict[int, int] = field(default_factory=dict)  # process id -> models it built
    startup_seconds: float = 0.0  # starting/connecting the dask cluster, not in samples_per_s
    cpu_seconds: float = 0.0  # CPU time of the processes running the tasks while samples_per_s was timed
    devices: dict[str, str] = field(default_factory=dict)  # worker address ("local" without dask) -> its device
    dtypes: dict[str, str] = field(default_factory=dict)  # node -> its store dtype (--dtype auto decides per node)

    @property
    def compression(self) -> float:
        return self.bytes_raw / max(self.bytes_on_disk, 1)

    @property
    def cores_busy(self) -> float:
        """Average cores the task processes kept busy (a worker's loader/writer threads count too)."""
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.store}: {self.chunks_run}/{self.chunks_total} chunks extracted "
                f"({self.rows_run} samples, {self.samples_per_s:.1f} samples/s), "
                f"{len(self.skipped)} skipped, {self.bytes_on_disk / 1e6:.2f} MB on disk, "
                f"compression {self.compression:.2f}x"
                + (f"; devices: {', '.join(f'{w} {d}' for w, d in sorted(self.devices.items()))}"
                   if self.devices else ""))


def _probe(source: Any, ids: list[str], choice: BackboneChoice, reduction: ReductionConfig,
           num_classes: int) -> tuple[Entry, str | None]:
    """Resolve a choice: check names, load the checkpoint once, forward one sample for channels and lengths."""
    spec, inp = choice.resolve()
    if choice.modality not in getattr(source, "modalities", (choice.modality,)):
        raise ExtractError(f"source {source.name!r} has no modality {choice.modality!r} "
                           f"(it has {', '.join(source.modalities)})")
    taps = spec.tap_specs(choice.setting, list(choice.taps) if choice.taps else None)
    item, last_err = None, None
    for sid in ids[:32]:  # the first readable sample decides data-dependent sizes
        try:
            item = spec.prepare_input(source.read(sid, choice.modality), choice.modality, inp)
            break
        except Exception as exc:  # noqa: BLE001
            last_err = f"{sid}: {exc}"
    if item is None:
        raise DataError(f"no readable {choice.modality} sample among the first {min(32, len(ids))} "
                        f"of source {source.name!r} (last error: {last_err})")
    input_dim = int(item.shape[-1]) if choice.modality == "text" else None
    model = spec.build(choice.setting, num_classes, choice.modality, input_dim, seed=INIT_SEED, example=item)
    sha = None
    if choice.inflate and (choice.backbone != "inflated_resnet50" or not choice.checkpoint):
        raise BackboneError("--inflate-from takes 2D ResNet-50 weights for inflated_resnet50 only")
    if choice.checkpoint:
        load = inflate_checkpoint if choice.inflate else load_checkpoint
        sha = load(model, choice.checkpoint, head=spec.head)
    elif spec.weights is not None:  # weights shipped with the backbone's package
        sha = sha256_weights(spec.weights())
    for tap in taps:
        get_module(model, tap.module)  # a tap that names no module: one line naming the backbone
    reader = TapReader(model.eval(), taps, reduction)
    try:
        with torch.inference_mode():
            out = reader.run(item[None])
    except (BackboneError, DataError):
        raise
    except Exception as exc:  # noqa: BLE001 - a user's module that cannot run the prepared input
        raise spec.input_failure(exc, item, choice.modality) from None
    finally:
        reader.close()
    taps = [replace(t, channels=int(out[t.name].shape[1])) for t in taps]  # probed, never asked of the user
    nodes = tuple(f"{choice.modality}_{i + 1}" for i in range(len(taps)))
    lengths = tuple(int(out[t.name].shape[-1]) for t in taps)
    peaks = tuple(peak_magnitude(out[t.name].float().numpy()) if out[t.name].isfinite().all() else math.inf
                  for t in taps)
    ckpt = str(Path(choice.checkpoint).resolve()) if choice.checkpoint else None
    return Entry(choice.modality, spec.name, choice.setting, ckpt, tuple(taps), nodes,
                 num_classes, input_dim, lengths, tuple(item.shape), str(item.dtype).replace("torch.", ""),
                 choice.inflate, inp, peaks), sha


def _init(e: Entry) -> str:
    """Where a backbone's weights came from, for the store's provenance."""
    spec = e.spec()
    if e.checkpoint:
        return "2D ResNet-50 checkpoint, centre-inflated" if e.inflate else "checkpoint"
    if spec.weights is not None:
        return f"pretrained weights {spec.weights()}"
    return f"random (seed {INIT_SEED})"


def _provenance(entries: list[Entry], shas: list[str | None], cfg: "ExtractConfig", n: int, source: Any,
                placement: Placement) -> dict:
    return {
        "device": _device_type(placement), "precision": placement.precision,
        "backbones": [{"modality": e.modality, "backbone": e.backbone, "setting": e.setting,
                       "checkpoint": e.checkpoint, "checkpoint_sha256": sha,
                       "init": _init(e),
                       "taps": [t.name for t in e.taps], "nodes": list(e.nodes), "input": e.input.as_dict(),
                       "inflate": e.inflate}
                      for e, sha in zip(entries, shas)],
        "reduction": cfg.reduction.as_dict(), "dtype": cfg.dtype, "num_samples": n,
        "rows_per_chunk": cfg.rows_per_chunk, "source": getattr(source, "name", "source"),
        "source_options": source.options() if hasattr(source, "options") else {}, "mode": cfg.mode,
    }


# provenance that must match to resume. "mode" (in-process, LocalCluster or --scheduler) is recorded
# but not compared: every mode writes the same bytes (tests/test_extract_job.py checks it)
SAME_KEYS = ("backbones", "reduction", "dtype", "num_samples", "rows_per_chunk", "source", "source_options",
             "device", "precision")


def _device_type(placement: Placement) -> str:
    """"cuda" or "cpu": what the store's provenance records (a resume on the other refuses to mix)."""
    return "cuda" if any(d.startswith("cuda") for _, d in placement.devices) else "cpu"


def place(device: str, precision: str, dtype: str, gpus: dict[str, int],
          backbones: Sequence[tuple[str, str]] = ()) -> Placement:
    """Each worker's device and the compute precision, from the GPUs each worker sees (`gpus`:
    worker address -> CUDA device count there; "" for this process without dask).

    Pure, so the assignment is testable without a GPU. `auto` is CUDA only when every worker has a
    GPU (one store is never half CPU, half GPU); `cuda` refuses workers without one, naming them.
    Workers on one host share its GPUs by rank (`stores.device.gpu_slot`). Precision `auto` is
    `extract.precision.auto_precision` of the job's `backbones` ((name, setting) pairs).
    """
    if device not in DEVICES:
        raise ExtractError(f"--device must be auto, cpu or cuda, not {device!r}")
    if precision not in ("auto",) + PRECISIONS:
        raise ExtractError(f"--precision must be auto, float32 or float16, not {precision!r}")
    if device == "cuda":
        blind = sorted(a or "this process" for a, n in gpus.items() if n < 1)
        if blind:
            raise ExtractError(f"--device cuda: no CUDA device is visible on {', '.join(blind)}; "
                               "use --device auto or cpu")
    cuda = device == "cuda" or (device == "auto" and bool(gpus) and all(n > 0 for n in gpus.values()))
    devices = tuple((a, f"cuda:{gpu_slot(a, gpus, n)[0]}" if cuda else "cpu") for a, n in sorted(gpus.items()))
    if precision == "auto":
        precision = auto_precision(cuda, dtype, backbones)
    return Placement(devices, precision)


def _gpu_count() -> int:
    """CUDA devices this process sees (run on each worker: the head node may have none)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# what a resume must match that is known before the workers are asked for their devices
EARLY_KEYS = tuple(k for k in SAME_KEYS if k not in ("device", "precision"))


def _comparable(prov: dict) -> dict:
    """The provenance that must match to resume (checkpoint paths may move; hashes may not)."""
    out = {k: prov.get(k) for k in SAME_KEYS}
    out["backbones"] = [{k: v for k, v in b.items() if k != "checkpoint"} for b in out["backbones"] or []]
    return out


def _reopen(out: str, prov: dict, keys: Sequence[str] = SAME_KEYS):
    """The writer of an existing store made with the same settings (resume); None for a store made
    with other settings that holds no complete chunk (nothing to lose: this run replaces it, so a
    run refused on its first chunk, e.g. for --dtype, reruns with the fix); else an ExtractError."""
    try:
        writer = open_writer(Path(out))
    except StoreError as exc:
        raise ExtractError(f"{out} is a bmnas store this run cannot resume ({exc}); "
                           "pass --overwrite to replace it, or choose another --out") from None
    old, new = _comparable(writer.attrs.get("extraction") or {}), _comparable(prov)
    diff = [k for k in keys if old.get(k) != new.get(k)]
    if diff and len(writer.missing_chunks()) == writer.num_chunks:
        return None
    if diff:
        raise ExtractError(f"{out} was extracted with other settings ({', '.join(diff)} differ); "
                           "pass --overwrite to replace it, or choose another --out")
    return writer


def _node_dtypes(entries: list[Entry], requested: str) -> dict[str, str]:
    """Each node's store dtype, decided once from its probe peak (`extract.dtypes.choose_dtype`)."""
    return {node: choose_dtype(requested, peak) for e in entries for node, peak in zip(e.nodes, e.peaks)}


def _forward_dtype(dtypes: dict[str, str]) -> str:
    """float16 when every node is stored in float16 (a float16 forward then loses nothing the store
    keeps), else float32: what precision `auto` is decided by."""
    return "float16" if set(dtypes.values()) == {"float16"} else "float32"


def _check_out(out: str) -> None:
    """Refuse an --out that exists and is not a bmnas store before any work starts: resuming or
    overwriting is only for a store bmnas made, and nothing else there is ever deleted."""
    path = Path(out)
    if not (path.exists() or path.is_symlink()) or is_bmnas_store(path) and not path.is_symlink():
        return
    what = "a file" if path.is_file() else "a folder" if path.is_dir() else "something"
    raise ExtractError(f"--out {out} is {what} that is not a bmnas feature store; bmnas neither writes "
                       "into it nor deletes it (--overwrite included): choose another --out")


def _check_writable(out: str) -> None:
    """Fail before starting any worker when the store cannot be created where asked."""
    parent = Path(out).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ExtractError(f"cannot create the store {out}: {parent} is not a writable directory")


def _create(out: str, entries: list[Entry], shas: list[str | None], prov: dict, source: Any, n: int,
            cfg: "ExtractConfig", dtypes: dict[str, str]):
    """A new, empty store with one node per tap and the per-node provenance attrs."""
    specs = []
    for e, sha in zip(entries, shas):
        for tap, node, length, peak in zip(e.taps, e.nodes, e.lengths, e.peaks):
            specs.append(NodeSpec(node, tap.channels, length, dtype=dtypes[node], attrs={
                "modality": e.modality, "backbone": e.backbone, "setting": e.setting, "layer": tap.name,
                "module": tap.module, "kind": tap.kind, "checkpoint": e.checkpoint,
                "checkpoint_sha256": sha, "init": _init(e), "input": e.input.as_dict(),
                "reduction": prov["reduction"], "probe_peak": peak}))
    try:
        writer = create_store(out, task=source.task, num_classes=source.num_classes, nodes=specs,
                              num_samples=n, rows_per_chunk=cfg.rows_per_chunk, codec=cfg.codec,
                              class_names=getattr(source, "class_names", None),
                              dataset=getattr(source, "name", None), extraction=prov, overwrite=cfg.overwrite)
    except (StoreError, OSError) as exc:
        raise ExtractError(f"cannot create the store {out}: {exc}") from None
    return writer


def _chunks_with_skips(writer: Any) -> list[int]:
    """Complete chunks whose rows include unwritten (all-NaN) samples: retried on resume."""
    import zarr

    arr = zarr.open_array(f"{writer.path}/features/{writer.nodes[0]}", mode="r")
    missing = set(writer.missing_chunks())
    out = []
    for k in range(writer.num_chunks):
        if k in missing:
            continue
        block = arr[writer.chunk_rows(k)]
        if np.isnan(block.reshape(block.shape[0], -1)).all(axis=1).any():
            out.append(k)
    return out


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class _Runner:
    """Runs tasks in this process or on a dask cluster, with a bounded number in flight."""

    def __init__(self, use_dask: bool, scheduler: str | None, workers: int, threads_per_worker: int,
                 timeout: float):
        self.client = None
        self._cluster = ExitStack()  # the client (and a local cluster) from `connect`, closed by close()
        self.shared: tuple = ()  # the source and sample ids, scattered to every worker by warm_up
        self.slots = 1
        if not use_dask:
            return
        try:
            self.client = self._cluster.enter_context(connect(scheduler, workers, threads_per_worker, timeout))
        except ConnectionError as exc:
            raise ExtractError(f"{exc}; check the address or run without --scheduler") from None
        info = self.client.scheduler_info()["workers"]
        self.slots = max(1, sum(w.get("nthreads", 1) for w in info.values()))

    def close(self) -> None:
        self._cluster.close()

    def gpus(self, device: str) -> dict[str, int]:
        """Worker address -> CUDA devices it sees, asked of the workers themselves (not this process);
        nothing is asked under --device cpu, so no worker touches CUDA."""
        if self.client is None:
            return {"": 0 if device == "cpu" else _gpu_count()}
        if device == "cpu":
            return {a: 0 for a in self.client.scheduler_info()["workers"]}
        return dict(self.client.run(_gpu_count))

    def warm_up(self, entries: tuple, reduction: ReductionConfig, placement: Placement, batch_size: int,
                source: Any, ids: list[str]) -> None:
        """Every worker imports and builds its models once and holds the source and the sample ids,
        before the clock for samples/s starts."""
        if self.client is None:
            warm_up(entries, reduction, placement, batch_size)
            return
        self.client.run(warm_up, entries, reduction, placement, batch_size)
        self.shared = (self.client.scatter(source, broadcast=True, hash=False),
                       self.client.scatter(ids, broadcast=True, hash=False))

    def cpu_seconds(self) -> float:
        """CPU time used so far by the processes that run tasks: every worker (on a shared cluster,
        including other clients' work), or this process with --no-dask."""
        if self.client is None:
            return time.process_time()
        return sum(self.client.run(time.process_time).values())

    def run(self, tasks: list[list[int]], args: tuple, on_result) -> None:
        """Call ``on_result(results)`` per task; stop starting tasks once it returns False."""
        if self.client is None:  # one pipeline over every chunk: decoding and writes overlap across chunks
            chunks = [k for task in tasks for k in task]
            run_chunks(args[0], args[1], args[2], chunks, *args[3:], on_chunk=lambda r: on_result([r]))
            return
        if not tasks:
            return
        from distributed import as_completed

        src, ids = self.shared
        todo = list(tasks)

        def submit(chunks):
            return self.client.submit(run_chunks, src, args[1], ids, chunks, *args[3:], pure=False,
                                      retries=0)

        running = as_completed([submit(todo.pop(0)) for _ in range(min(self.slots, len(todo)))])
        stop = False
        for fut in running:
            try:
                results = fut.result()
            except Exception as exc:  # a worker died, a full disk or a bug: keep what is written, report
                stop = True
                on_result([ChunkResult(-1, 0, 0.0, task_error=_task_error(exc))])
                continue
            if on_result(results) is False:
                stop = True
            if todo and not stop:
                running.add(submit(todo.pop(0)))


def _task_error(exc: BaseException) -> str:
    """Why a dask task failed, in words: a full disk is the machine's state (free space, rerun), not
    a bug to report with its repr."""
    if disk_full(exc):
        return f"no space left on the device writing {exc.filename or 'the store'}; free space first"
    return f"task failed: {exc!r}"


@holds_lock("out", "store")
def extract(source: Any, out: str, backbones: Sequence[BackboneChoice], config: ExtractConfig | None = None,
            **options: Any) -> ExtractResult:
    """Run frozen backbones over every sample of ``source`` into the store at ``out`` (resumable).

    ``options`` are ExtractConfig fields replacing those of ``config``. Device and precision go into
    the store's provenance, and a resume with other values is refused."""
    cfg = replace(config or ExtractConfig(), **options)
    _check_options({"--rows-per-chunk": cfg.rows_per_chunk, "--chunks-per-task": cfg.chunks_per_task,
                    "--batch-size": cfg.batch_size, "--workers": cfg.workers,
                    "--threads-per-worker": cfg.threads_per_worker}, cfg.on_error, cfg.dtype, backbones)
    if cfg.decode_threads != AUTO and (not isinstance(cfg.decode_threads, int) or cfg.decode_threads < 1):
        raise ExtractError(f"--decode-threads {cfg.decode_threads!r}: use a positive integer or auto")
    place(cfg.device, cfg.precision, cfg.dtype, {})  # bad option values fail before any work
    _check_out(out)
    samples = source.samples()
    if not samples:
        raise DataError(f"source {getattr(source, 'name', '?')!r} lists no samples")
    ids = [s.id for s in samples]
    probed = [_probe(source, ids, b, cfg.reduction, source.num_classes) for b in backbones]
    entries, shas = [p[0] for p in probed], [p[1] for p in probed]
    resumed = Path(out).exists() and not cfg.overwrite
    if resumed:  # a store made with other settings is refused before a cluster starts
        _reopen(out, _provenance(entries, shas, cfg, len(ids), source, Placement(())), EARLY_KEYS)
    else:
        _check_writable(out)
    tally = _Tally()
    t_start = time.perf_counter()
    # connect or start the cluster first: a scheduler that does not answer leaves no files behind
    runner = _Runner(cfg.use_dask, cfg.scheduler, cfg.workers, cfg.threads_per_worker, cfg.timeout)
    try:
        dtypes = _node_dtypes(entries, cfg.dtype)
        placement = place(cfg.device, cfg.precision, _forward_dtype(dtypes), runner.gpus(cfg.device),
                          [(e.backbone, e.setting) for e in entries])
        prov = _provenance(entries, shas, cfg, len(ids), source, placement)
        writer = _reopen(out, prov) if resumed else None
        if writer is None:  # a new store, or one holding no complete chunk made with other settings
            resumed, fresh = False, replace(cfg, overwrite=cfg.overwrite or Path(out).exists())
            writer = _create(out, entries, shas, prov, source, len(ids), fresh, dtypes)
        run = _run_tasks(runner, writer, tally, cfg, (source, ids, tuple(entries), placement), resumed)
    finally:
        runner.close()
        if tally.bar is not None:
            tally.bar.close()
    tally.raise_first_failure(writer, placement.precision)
    _finalize(writer, source, samples, tally.skipped)
    return _result(writer, entries, tally, len(ids), run, run["t0"] - t_start)


def _run_tasks(runner: _Runner, writer: Any, tally: "_Tally", cfg: ExtractConfig, job: tuple,
               resumed: bool) -> dict[str, Any]:
    """Every chunk without a completion record (and, on a resume, every chunk holding skipped samples)
    as tasks of ``chunks_per_task`` chunks; returns their count and the timed seconds and CPU time."""
    source, ids, entries, placement = job
    todo = sorted(set(writer.missing_chunks()) | (set(_chunks_with_skips(writer)) if resumed else set()))
    tasks = [todo[i:i + cfg.chunks_per_task] for i in range(0, len(todo), max(1, cfg.chunks_per_task))]
    if tasks:
        runner.warm_up(entries, cfg.reduction, placement, cfg.batch_size, source, ids)
    if cfg.progress:
        tally.bar = tqdm(total=writer.num_chunks, initial=writer.num_chunks - len(todo), unit="chunk",
                         desc="extract", leave=False)
    cpu0, t0 = runner.cpu_seconds(), time.perf_counter()
    runner.run(tasks, (source, str(writer.path), ids, entries, cfg.reduction, placement, cfg.batch_size,
                       cfg.on_error, cfg.decode_threads), tally.add)
    return {"chunks": sum(len(t) for t in tasks), "seconds": time.perf_counter() - t0,
            "cpu": runner.cpu_seconds() - cpu0, "t0": t0}


def _result(writer: Any, entries: list[Entry], tally: "_Tally", n: int, run: dict[str, Any],
            startup: float) -> ExtractResult:
    dtypes = writer.node_dtypes()
    raw = sum(n * c * t * np.dtype(dtypes[node]).itemsize for e in entries for node, (c, t) in e.shapes().items())
    seconds, rows_run = run["seconds"], tally.rows_run
    return ExtractResult(str(writer.path), {k: v for e in entries for k, v in e.shapes().items()},
                         writer.num_chunks, run["chunks"], rows_run, seconds,
                         rows_run / seconds if seconds > 0 else 0.0, _dir_bytes(Path(writer.path) / "features"), raw,
                         tally.skipped, tally.built, startup, run["cpu"], tally.devices, dtypes)


def _check_options(counts: dict[str, Any], on_error: str, dtype: str, backbones: Sequence[BackboneChoice]) -> None:
    """Refuse option values a run cannot use, before the store is touched."""
    for option, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise ExtractError(f"{option} {value!r}: use a positive integer")
    if on_error not in ON_ERROR:
        raise ExtractError(f"--on-error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
    if dtype not in DTYPE_CHOICES:
        raise ExtractError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, not {dtype!r}")
    if not backbones:
        raise BackboneError("give at least one backbone (--backbone MODALITY=NAME)")
    mods = [b.modality for b in backbones]
    if len(set(mods)) != len(mods):
        raise BackboneError(f"one backbone per modality (node names are <modality>_<k>); got {mods}")


class _Tally:
    """The chunk results of one run as they arrive: rows, skips, models built and devices per worker,
    and the failures that stop it (the progress bar moves one chunk per result)."""

    def __init__(self) -> None:
        self.rows_run = 0
        self.skipped: list[dict] = []
        self.failures: list[ChunkResult] = []
        self.built: dict[int, int] = {}
        self.devices: dict[str, str] = {}
        self.bar: Any = None

    def add(self, results: list[ChunkResult]) -> bool:
        """Count a task's results; False (stop starting tasks) once one has failed."""
        for r in results:
            if not r.ok:
                self.failures.append(r)
                continue
            self.rows_run += r.rows
            self.skipped.extend(r.skipped)
            self.built[r.pid] = max(self.built.get(r.pid, 0), r.models_built)
            self.devices[r.worker] = r.device
            if self.bar is not None:
                self.bar.update(1)
        return not self.failures

    def raise_first_failure(self, writer: Any, precision: str) -> None:
        """The first failure as one error saying what is kept and how to go on."""
        if not self.failures:
            return
        first = self.failures[0]
        done = writer.num_chunks - len(writer.missing_chunks())
        kept = f"{done}/{writer.num_chunks} chunks are complete and kept"
        if first.unstorable is not None:
            then = ("fix it and rerun the same command to resume" if first.unstorable["produced"] else
                    "a rerun with the fix replaces a store without complete chunks (with some, add --overwrite)")
            raise ExtractError(f"{unstorable_message(first.unstorable, precision)}. Nothing non-finite was "
                               f"written; {kept}; {then}")
        if first.task_error is not None:
            raise ExtractError(f"an extraction task failed: {first.task_error}. {kept}; rerun the same command "
                               "to resume")
        f = first.failed
        raise DataError(f"sample {f['id']} ({f['path']}) could not be read: {f['reason']}. {kept}; fix or "
                        "remove the file and rerun to resume, or pass --on-error skip")


def _finalize(writer: Any, source: Any, samples: list, skipped: list[dict]) -> None:
    """Labels, splits without the skipped rows, ids and skip records."""
    bad = {s["row"] for s in skipped}
    splits: dict[str, list[int]] = {}
    for row, s in enumerate(samples):
        if row not in bad:
            splits.setdefault(s.split, []).append(row)
    records = [{"id": s["id"], "path": s["path"], "reason": s["reason"]} for s in sorted(skipped, key=lambda r: r["row"])]
    writer.finalize(source.label_array(samples), {k: np.asarray(v, np.int64) for k, v in splits.items()},
                    sample_ids=[s.id for s in samples], skipped=records)
