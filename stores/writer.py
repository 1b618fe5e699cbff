"""Writing stores: chunk-aligned row slabs from many processes, completion records, finalize.

Why a per-chunk completion record: a writer killed between a chunk's data and its record leaves
that chunk "missing", so a resumed extraction rewrites it instead of trusting half-written data.
The record is one element of a ``completion`` array chunked by one, i.e. one small file per row
chunk, so processes writing disjoint row chunks never touch the same file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec
from zarr.storage import LocalStore

try:  # zarr internals the fast chunk path needs; without them (another zarr 3.x) the array API writes
    from zarr.abc.codec import BytesBytesCodec, SupportsSyncCodec
    from zarr.core.buffer import default_buffer_prototype
except ImportError:  # pragma: no cover - depends on the installed zarr
    SupportsSyncCodec = None

from stores import schema as S
from stores.errors import StoreError
from stores.files import replace_atomic
from stores.identity import chunk_digest
from stores.lock import holds_lock
from stores.reader import _member, open_store


def _compressor(codec: str, dtype: str) -> BloscCodec:
    if codec not in S.CODECS:
        raise StoreError(f"codec {codec!r} is not supported; use one of {', '.join(S.CODECS)}")
    return BloscCodec(cname=codec, clevel=3, shuffle="shuffle", typesize=np.dtype(dtype).itemsize)


def is_bmnas_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder bmnas made as a feature store: its root ``zarr.json`` carries the
    format marker (written with the group itself, so even a store killed while being created has it)."""
    meta = Path(path) / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(attrs, dict) and isinstance(attrs.get(S.ATTRS_KEY), dict) \
        and attrs[S.ATTRS_KEY].get("format") == S.FORMAT


def _prepare_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """The path of a new store; with `overwrite`, an existing bmnas store there is removed first.

    Why only a bmnas store: `--overwrite` is for replacing a cache made with other settings, and a
    folder or file without the format marker is the user's, which no bmnas command deletes."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise StoreError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        if path.is_symlink() or not path.is_dir() or not is_bmnas_store(path):
            raise StoreError(f"{path} is not a bmnas feature store, so overwrite will not delete it; "
                             "choose another path (or remove it yourself)")
        shutil.rmtree(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not os.access(parent if parent.exists() else Path("."), os.W_OK):
        raise StoreError(f"cannot write the store at {path}: {parent} is not writable")
    return path


def _whole_chunks_encodable(arr: zarr.Array) -> bool:
    """Whether chunks of ``arr`` can be written by `_put_chunk`: a local store, chunks spanning
    every axis but the first, and zarr codecs that encode synchronously (bytes, then blosc/zstd/...)."""
    if SupportsSyncCodec is None:
        return False
    codecs = arr.metadata.codecs
    return (isinstance(arr.store, LocalStore) and tuple(arr.chunks[1:]) == tuple(arr.shape[1:])
            and isinstance(codecs[0], BytesCodec)
            and all(isinstance(c, BytesBytesCodec) and isinstance(c, SupportsSyncCodec) for c in codecs[1:]))


def _put_chunk(arr: zarr.Array, k: int, block: np.ndarray) -> None:
    """Write row chunk ``k`` of ``arr`` as zarr would (its own codecs, key, fill-value padding and
    empty-chunk rule; the file replaced atomically) in this thread, without zarr's async IO loop.

    Why: through the loop, a chunk of several small node arrays plus its record costs mostly Python
    holding the GIL (thread hops per array), which the forward pass of an extraction waits for; here
    the cost is encoding and file system calls, about half as long.
    """
    coords = (k,) + (0,) * (arr.ndim - 1)
    proto = default_buffer_prototype()
    spec = arr.metadata.get_chunk_spec(coords, arr.async_array.config, proto)
    if block.shape != spec.shape:  # the last row chunk: zarr pads it with the fill value
        full = np.full(spec.shape, spec.fill_value, dtype=block.dtype)
        full[: block.shape[0]] = block
        block = full
    buf = proto.nd_buffer.from_numpy_array(np.ascontiguousarray(block))
    path = Path(arr.store.root, arr.path, arr.metadata.encode_chunk_key(coords))
    if not spec.config.write_empty_chunks and buf.all_equal(spec.fill_value):
        path.unlink(missing_ok=True)  # as zarr: a chunk of fill values is no file
        return
    for codec in arr.metadata.codecs:
        buf = codec._encode_sync(buf, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomic(path, lambda tmp: tmp.write_bytes(buf.as_buffer_like()))


class StoreWriter:
    """Handle on a store being written. Cheap to pickle (holds only the path) for dask tasks."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        try:
            self._group = zarr.open_group(self.path, mode="r+")
        except Exception as exc:  # zarr raises several types for "not a group"
            raise StoreError(f"{self.path} is not a bmnas feature store ({exc})") from None
        attrs = dict(self._group.attrs).get(S.ATTRS_KEY)
        if not isinstance(attrs, dict) or attrs.get("format") != S.FORMAT:
            raise StoreError(f"{self.path} is not a bmnas feature store (attrs['bmnas'] missing)")
        self.attrs: dict[str, Any] = attrs
        self.nodes: list[str] = list(attrs["nodes"])
        self._nodes: dict[str, zarr.Array] = {}  # each node's metadata read once, and readable: a resume
        for name in self.nodes:                  # never finalizes a damaged store
            self._nodes[name] = _member(self._group, f"{S.FEATURES}/{name}")
            if self._nodes[name] is None:
                raise StoreError(f"{self.path}: features/{name} is missing (listed in attrs['bmnas']['nodes'])")
        first = self._nodes[self.nodes[0]]
        self.num_samples = int(first.shape[0])
        self.rows_per_chunk = int(first.chunks[0])
        self.num_chunks = S.num_chunks(self.num_samples, self.rows_per_chunk)
        self._arrays: tuple[dict[str, zarr.Array], zarr.Array] | None = None
        self._whole_chunks = False  # every array takes `_put_chunk`
        self._hashes: zarr.Array | None = None  # chunk_sha256 (absent in stores of older bmnas)

    def __reduce__(self):
        return (StoreWriter, (self.path,))

    def chunk_rows(self, k: int) -> slice:
        """Rows of row chunk ``k`` (the last chunk may be short)."""
        if not 0 <= k < self.num_chunks:
            raise StoreError(f"{self.path}: chunk {k} out of range 0..{self.num_chunks - 1}")
        start = k * self.rows_per_chunk
        return slice(start, min(start + self.rows_per_chunk, self.num_samples))

    def _open_arrays(self) -> tuple[dict[str, zarr.Array], zarr.Array]:
        """Node arrays and the completion array, opened once per writer (opening reads metadata)."""
        if self._arrays is None:
            nodes = self._nodes
            self._hashes = self._group[S.CHUNK_HASHES] if S.CHUNK_HASHES in self._group else None
            self._arrays = (nodes, self._group[S.COMPLETION])
            more = [self._arrays[1]] + ([self._hashes] if self._hashes is not None else [])
            self._whole_chunks = all(_whole_chunks_encodable(a) for a in [*nodes.values(), *more])
        return self._arrays

    def write_chunk(self, k: int, features: Mapping[str, np.ndarray]) -> None:
        """Write every node's rows of chunk ``k``, then its completion record (in that order).

        Chunk files are encoded and written in this thread (`_put_chunk`) when the store allows,
        else through zarr's array API; either way the record is written after all the data.
        """
        rows = self.chunk_rows(k)
        missing = set(self.nodes) - set(features)
        if missing:
            raise StoreError(f"{self.path}: chunk {k} lacks nodes {sorted(missing)}")
        arrays, completion = self._open_arrays()
        slabs = {}
        for name, arr in arrays.items():
            data = np.asarray(features[name])
            want = (rows.stop - rows.start,) + tuple(arr.shape[1:])
            if data.shape != want:
                raise StoreError(f"features/{name}: chunk {k} has shape {data.shape}, expected {want}")
            slabs[name] = data.astype(arr.dtype, copy=False)
        digest = chunk_digest(slabs)[None]
        if self._whole_chunks:
            for name, slab in slabs.items():
                _put_chunk(arrays[name], k, slab)
            if self._hashes is not None:
                _put_chunk(self._hashes, k, digest)
            _put_chunk(completion, k, np.ones(1, completion.dtype))
        else:
            for name, slab in slabs.items():
                arrays[name][rows] = slab
            if self._hashes is not None:
                self._hashes[k] = digest[0]
            completion[k] = 1

    def node_dtypes(self) -> dict[str, str]:
        """Each node's dtype as stored (what its values are cast to when a chunk is written)."""
        arrays, _ = self._open_arrays()
        return {name: str(arr.dtype) for name, arr in arrays.items()}

    def missing_chunks(self) -> list[int]:
        """Row chunks whose completion record is absent: what a resumed extraction must (re)write."""
        done = self._group[S.COMPLETION][:]
        return [int(k) for k in np.flatnonzero(done == 0)]

    def finalize(
        self,
        labels: np.ndarray,
        splits: Mapping[str, Sequence[int] | np.ndarray],
        sample_ids: Sequence[str] | None = None,
        skipped: Sequence[Mapping[str, Any]] = (),
        extra_attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Write labels, splits, ids and provenance once every chunk is complete."""
        missing = self.missing_chunks()
        if missing:
            raise StoreError(f"{self.path}: cannot finalize, {len(missing)} chunks are not written (first: {missing[:5]})")
        _write_tables(self._group, self.num_samples, self.rows_per_chunk, labels, splits, sample_ids)
        attrs = dict(self.attrs)
        attrs["skipped"] = [dict(s) for s in skipped]  # always: a resumed run that fixed a sample clears it
        attrs.update(extra_attrs or {})
        self._group.attrs[S.ATTRS_KEY] = attrs
        self.attrs = attrs


# labels, splits and ids: every chunk gets a file even when it holds only the fill value (class 0), so
# a missing file always means damage (`stores.integrity.lost_chunk_problem`)
_EVERY_CHUNK = {"write_empty_chunks": True}


def _write_tables(group: zarr.Group, n: int, rows_per_chunk: int, labels: np.ndarray,
                  splits: Mapping[str, Any], sample_ids: Sequence[str] | None) -> None:
    labels = np.asarray(labels)
    if labels.shape[0] != n:
        raise StoreError(f"labels: {labels.shape[0]} rows, but the features have {n}")
    dtype = np.uint8 if labels.ndim == 2 else np.int64
    group.create_array(S.LABELS, shape=labels.shape, dtype=dtype, chunks=(min(n, 65536),) + labels.shape[1:],
                       overwrite=True, config=_EVERY_CHUNK)[...] = labels.astype(dtype)
    for name, idx in splits.items():
        idx = np.asarray(idx, dtype=np.int64)
        group.create_array(f"{S.SPLITS_GROUP}/{name}", shape=idx.shape, dtype=np.int64,
                           chunks=(max(1, min(len(idx), 65536)),), overwrite=True, config=_EVERY_CHUNK)[...] = idx
    if sample_ids is not None:
        ids = np.asarray([str(s) for s in sample_ids], dtype=str)
        if ids.shape != (n,):
            raise StoreError(f"sample_ids: {ids.shape[0]} ids for {n} rows")
        group.create_array(S.SAMPLE_IDS, shape=(n,), dtype=str, chunks=(min(n, 65536),), overwrite=True,
                           config=_EVERY_CHUNK)[...] = ids


def create_store(
    path: str | os.PathLike,
    *,
    task: str,
    num_classes: int,
    nodes: Sequence[S.NodeSpec],
    num_samples: int,
    dtype: str = "float16",
    rows_per_chunk: int = 256,
    codec: str = "zstd",
    class_names: Sequence[str] | None = None,
    dataset: str | None = None,
    extraction: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> StoreWriter:
    """Create an empty store (features filled with NaN, never zeros) ready for chunk writes;
    `dtype` is that of every node without one of its own (`NodeSpec.dtype`)."""
    if task not in S.TASKS:
        raise StoreError(f"task {task!r} is not one of {', '.join(S.TASKS)}")
    for want in sorted({dtype, *(n.dtype for n in nodes if n.dtype)}):
        if want not in S.DTYPES:
            raise StoreError(f"dtype {want!r} is not one of {', '.join(S.DTYPES)}")
    if num_classes < 1 or num_samples < 1 or rows_per_chunk < 1:
        raise StoreError("num_classes, num_samples and rows_per_chunk must be positive")
    names = [n.name for n in nodes]
    if not names or len(set(names)) != len(names):
        raise StoreError(f"node names must be non-empty and unique, got {names}")
    _compressor(codec, dtype)  # an unknown codec is refused before anything is written
    path = _prepare_path(path, overwrite)
    attrs: dict[str, Any] = {"format": S.FORMAT, "version": S.VERSION, "task": task,
                             "num_classes": int(num_classes), "nodes": names}
    if class_names is not None:
        attrs["class_names"] = [str(c) for c in class_names]
    if dataset is not None:
        attrs["dataset"] = dataset
    if extraction is not None:
        attrs["extraction"] = dict(extraction)
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={S.ATTRS_KEY: attrs})
    for node in nodes:
        node_dtype = node.dtype or dtype
        arr = group.create_array(f"{S.FEATURES}/{node.name}", shape=(num_samples, node.channels, node.length),
                                 chunks=(rows_per_chunk, node.channels, node.length), dtype=node_dtype,
                                 compressors=_compressor(codec, node_dtype), fill_value=np.nan)
        arr.attrs.update(dict(node.attrs))
    chunks = S.num_chunks(num_samples, rows_per_chunk)
    group.create_array(S.COMPLETION, shape=(chunks,), chunks=(1,), dtype=np.uint8, fill_value=0)
    group.create_array(S.CHUNK_HASHES, shape=(chunks, 32), chunks=(1, 32), dtype=np.uint8, fill_value=0)
    return StoreWriter(path)


def open_writer(path: str | os.PathLike) -> StoreWriter:
    """Reopen an existing store for resumed chunk writes or finalize."""
    if not Path(path).exists():
        raise StoreError(f"{path} does not exist; create the store first")
    return StoreWriter(path)


@holds_lock("path", "store")
def write_store_from_arrays(
    path: str | os.PathLike,
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    splits: Mapping[str, Sequence[int] | np.ndarray],
    *,
    task: str,
    num_classes: int,
    dtype: str = "float32",
    rows_per_chunk: int = 256,
    codec: str = "zstd",
    class_names: Sequence[str] | None = None,
    sample_ids: Sequence[str] | None = None,
    dataset: str | None = None,
    overwrite: bool = False,
):
    """Bring-your-own features: write in-memory (N, C, T) arrays as a valid, opened store."""
    if not features:
        raise StoreError("features: give at least one node")
    specs = []
    n = None
    for name, arr in features.items():
        if np.ndim(arr) != 3:
            raise StoreError(f"features/{name}: expected (N, C, T), got shape {np.shape(arr)}")
        n = arr.shape[0] if n is None else n
        if arr.shape[0] != n:
            raise StoreError(f"features/{name}: {arr.shape[0]} rows, other nodes have {n}")
        specs.append(S.NodeSpec(name, int(arr.shape[1]), int(arr.shape[2])))
    writer = create_store(path, task=task, num_classes=num_classes, nodes=specs, num_samples=int(n),
                          dtype=dtype, rows_per_chunk=rows_per_chunk, codec=codec, class_names=class_names,
                          dataset=dataset, overwrite=overwrite)
    cast = {name: np.asarray(arr).astype(dtype, copy=False) for name, arr in features.items()}
    for name, arr in cast.items():  # whole arrays at once: zarr splits them into chunks
        writer._group[f"{S.FEATURES}/{name}"][...] = arr
    writer._group[S.CHUNK_HASHES][...] = np.stack([chunk_digest({n: a[writer.chunk_rows(k)] for n, a in cast.items()})
                                                   for k in range(writer.num_chunks)])
    writer._group[S.COMPLETION][...] = 1
    writer.finalize(labels, splits, sample_ids)
    return open_store(path)
