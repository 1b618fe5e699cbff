"""`bmnas data prepare`: decode a dataset once into what its source reads, for repeated extraction.

Every extraction, pretraining and fine-tuning epoch decodes each sample's video again: at NTU's
1920x1080 H.264 that is 0.2-0.5 s of one core per sample, far more than a backbone's forward on a
GPU. Preparing saves each sample's modalities exactly as the source reads them (frames sampled,
resized and cropped; skeletons parsed, centred and resampled) as ``.npy`` files beside a manifest,
so reading a sample costs a file read. The result is a manifest dataset
(`extract.sources.manifest`) with the same sample ids, splits, labels and class names: a store
extracted from it holds the same values as one extracted from the raw data with the source's
settings, and `finetune --store S --source PREPARED` accepts it.

The output folder is bmnas's own: a rerun with the same source and settings resumes (each sample's
files are written whole, by rename), other settings or a foreign folder are refused, and the
manifest is written last, so a dataset without one is unfinished and no reader takes it for done.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from extract.errors import DataError, ExtractError
from extract.sources.base import Sample, Source
from extract.sources.ntu import SYNTH_META
from stores.device import usable_cores
from stores.files import write_json_atomic, write_npy_atomic, write_text_atomic
from stores.lock import exclusive

PREPARED = "bmnas_prepared.json"
MANIFEST = "manifest.jsonl"
FORMAT = "bmnas-prepared"
VERSION = 1
ON_ERROR = ("fail", "skip")
AUTO = "auto"


@dataclass
class PrepareResult:
    """What one call did: samples written now, found done by an earlier call, and left out."""

    out: Path
    written: int = 0
    reused: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    complete_before: bool = False


def sample_files(index: int, modalities: Iterable[str]) -> dict[str, str]:
    """The relative paths of sample `index`'s files: by position, since ids may hold '/' (EgoGesture)."""
    return {m: f"{m}/{index:07d}.npy" for m in modalities}


def settings_of(source: Source, samples: list[Sample]) -> dict[str, Any]:
    """What a prepared folder is made from: the source kind, its resolved options and its sample list
    (hashed), so that a resume with other frames, size or files is refused instead of mixing them."""
    ids = hashlib.sha256("\n".join(f"{s.id}\t{s.split}\t{s.label}" for s in samples).encode()).hexdigest()
    return {"source": source.name, "options": source.options(), "modalities": list(source.modalities),
            "samples": len(samples), "samples_sha256": ids[:16]}


def prepared_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record of a folder `prepare_dataset` wrote (given the folder or its manifest), else None."""
    path = Path(path)
    record = (path if path.is_dir() else path.parent) / PREPARED
    try:
        return json.loads(record.read_text()) if record.is_file() else None
    except (OSError, ValueError):
        return None


def options_for_prepared(path: str | os.PathLike, source: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The source options to open `path` with when a stage wants the data read as `source` with
    `options` (a store's record): {} for a prepared copy made with exactly those (its arrays are that
    reading already), None when `path` is not a prepared copy; a prepared copy made from another
    source or with other options is refused, naming the first difference."""
    record = prepared_record(path)
    if record is None:
        return None
    held = record.get("settings", {})
    if held.get("source") != source:
        raise ExtractError(f"--source {path} was prepared from a {held.get('source')} source, the store read a "
                           f"{source} source: prepare the store's data")
    differ = _differing(held.get("options", {}), options)
    if differ:
        k = differ[0]
        raise ExtractError(f"--source {path} was prepared with {k} {held.get('options', {}).get(k)!r}, the store "
                           f"was extracted with {k} {options.get(k)!r}: prepare it again with --source-opt {k}=...")
    return {}


def _differing(held: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys whose values differ between a prepared folder's record and what is asked now, sorted."""
    return sorted(k for k in set(held) | set(now) if held.get(k) != now.get(k))


def _record(settings: dict[str, Any], location: dict[str, Any] | None, **state: Any) -> dict[str, Any]:
    """The folder's record (`PREPARED`): what it is made from, where from, and how far it got."""
    return {"format": FORMAT, "version": VERSION, "settings": settings, "location": location or {}, **state}


def _check_out(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse an --out that bmnas did not prepare or prepared from other settings; its record, if any."""
    if out.exists() and not out.is_dir():
        raise ExtractError(f"--out {out} is a file, not a folder: give a new folder path")
    record = out / PREPARED
    if not record.is_file():
        names = [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
        if names:
            raise ExtractError(f"--out {out} holds {', '.join(sorted(names)[:3])}, which bmnas data prepare did "
                               "not write: give a new folder")
        return None
    try:
        held = json.loads(record.read_text())
    except (OSError, ValueError) as exc:
        raise ExtractError(f"{record}: unreadable ({exc}); give a new --out") from None
    differ = _differing(held.get("settings", {}), settings)
    if differ:
        raise ExtractError(f"--out {out} was prepared with other {', '.join(differ)} "
                           f"({held.get('settings', {}).get(differ[0])!r}, now {settings.get(differ[0])!r}): "
                           "give a new --out or the same source and options")
    return held


def _save_sample(source: Source, sample_id: str, files: dict[str, str], out: str) -> str | None:
    """Read every modality of one sample and save it whole; the DataError text when it cannot be read."""
    try:
        arrays = {m: source.read(sample_id, m) for m in files}
    except DataError as exc:
        return str(exc)
    for modality, rel in files.items():
        write_npy_atomic(Path(out) / rel, arrays[modality])
    return None


def check_preparable(source: Source, samples: list[Sample]) -> None:
    """Refuse, before anything is written, a source whose modalities a manifest cannot name or whose
    first readable sample holds something other than arrays (raw text: a text backbone tokenises it
    at extraction, which reading a string back would not spare)."""
    from extract.sources.manifest import modality_kind

    odd = [m for m in source.modalities if modality_kind(m) is None]
    if odd:
        raise ExtractError(f"the {source.name} source's modality {odd[0]!r} has no manifest column kind; "
                           "data prepare writes manifests (video, depth, skeleton, image, text, array_<name>)")
    listed = source.unreadable()
    for s in samples[:20]:
        if s.id in listed:
            continue
        try:
            values = {m: source.read(s.id, m) for m in source.modalities}
        except DataError:
            continue
        for m, value in values.items():
            if not isinstance(value, np.ndarray):
                raise ExtractError(f"the {m} of {source.name} samples is {type(value).__name__}, not an array: "
                                   "only array modalities can be prepared; extract this dataset directly")
        return


_WORKER_SOURCE: Source | None = None


def _worker_start(source: Source) -> None:
    """A pool process's setup: the source once (not pickled per sample), one torch thread (the
    sources resize with torch; the processes share the cores)."""
    import torch

    global _WORKER_SOURCE
    _WORKER_SOURCE = source
    torch.set_num_threads(1)


def _save_in_worker(sample_id: str, files: dict[str, str], out: str) -> str | None:
    assert _WORKER_SOURCE is not None
    return _save_sample(_WORKER_SOURCE, sample_id, files, out)


def _pending(samples: list[Sample], modalities: tuple[str, ...], out: Path) -> list[tuple[int, Sample]]:
    """The samples whose files are not all there; a killed run's half-written temporaries are removed."""
    for m in modalities:
        for tmp in (out / m).glob("*.npy.*.partial"):
            tmp.unlink()
    done = lambda i: all((out / rel).is_file() for rel in sample_files(i, modalities).values())  # noqa: E731
    return [(i, s) for i, s in enumerate(samples) if not done(i)]


def _run(source: Source, todo: list[tuple[int, Sample]], out: Path, workers: int, on_error: str,
         result: PrepareResult, progress: bool) -> None:
    """Save the pending samples, in `workers` processes (spawned: no forked torch thread pools)."""
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="preparing", unit="sample", disable=not progress)
    jobs = [(s.id, sample_files(i, source.modalities)) for i, s in todo]
    pool = None
    if workers > 1 and jobs:
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_start,
                                   initargs=(source,))
    try:
        if pool is not None:
            ids, files = zip(*jobs)
            results = pool.map(_save_in_worker, ids, files, [str(out)] * len(jobs), chunksize=4)
        else:
            results = (_save_sample(source, sid, rels, str(out)) for sid, rels in jobs)
        for (sid, _), why in zip(jobs, results):
            bar.update()
            if why is None:
                result.written += 1
            elif on_error == "skip":
                result.skipped[sid] = why
            else:
                raise DataError(f"{why} (the samples saved so far stay: rerun with --on-error skip to leave "
                                "it out, or fix the file and rerun to resume)")
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _write_manifest(source: Source, samples: list[Sample], out: Path, skipped: dict[str, str]) -> None:
    key = "labels" if source.task == "multilabel" else "label"
    lines = []
    for i, s in enumerate(samples):
        if s.id in skipped:
            continue
        row = {"id": s.id, "split": s.split, key: list(s.label) if key == "labels" else s.label}
        lines.append(json.dumps({**row, **sample_files(i, source.modalities)}))
    names = source.class_names or [str(i) for i in range(source.num_classes)]
    write_text_atomic(out / "classes.txt", "".join(f"{n}\n" for n in names))
    if getattr(source, "metadata", None):  # a synthetic dataset's factors and ceilings travel along
        write_json_atomic(out / SYNTH_META, source.metadata)
    write_text_atomic(out / MANIFEST, "".join(f"{line}\n" for line in lines))


def prepare_dataset(source: Source, out: str | os.PathLike, *, location: dict[str, Any] | None = None,
                    workers: int | str = AUTO, on_error: str = "fail", progress: bool = True) -> PrepareResult:
    """Save every sample of `source` as it reads them into the manifest dataset `out` (resumable).
    `workers`: decoding processes, `auto` one per core (at most one per pending sample)."""
    if on_error not in ON_ERROR:
        raise ExtractError(f"--on-error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
    if workers != AUTO and (not isinstance(workers, int) or workers < 1):
        raise ExtractError(f"--workers {workers!r}: use a positive integer or auto")
    out = Path(out)
    t0 = time.perf_counter()
    samples = source.samples()
    if not samples:
        raise DataError(f"{location or source.name}: the source lists no samples; nothing to prepare")
    settings = settings_of(source, samples)
    check_preparable(source, samples)
    result = PrepareResult(out)
    with exclusive(out, "prepared dataset"):
        held = _check_out(out, settings)
        if held and held.get("complete"):  # the record is rewritten after the manifest: a kill between redoes both
            result.reused, result.skipped, result.complete_before = held["written"], held["skipped"], True
            return result
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / PREPARED, _record(settings, location, complete=False))
        for m in source.modalities:
            (out / m).mkdir(exist_ok=True)
        todo = _pending(samples, source.modalities, out)
        result.reused = len(samples) - len(todo)
        listed = source.unreadable()
        todo_readable = [(i, s) for i, s in todo if s.id not in listed or on_error == "fail"]
        result.skipped.update({s.id: listed[s.id] for _, s in todo if s.id in listed and on_error == "skip"})
        cores = usable_cores()
        _run(source, todo_readable, out, min(cores, len(todo_readable)) if workers == AUTO else workers, on_error,
             result, progress)
        _write_manifest(source, samples, out, result.skipped)
        result.seconds = time.perf_counter() - t0
        write_json_atomic(out / PREPARED, _record(settings, location, complete=True,
                                                  written=len(samples) - len(result.skipped), skipped=result.skipped))
    return result
