"""Opening stores: validation against format v1 (docs/store-format.md), and the entry points to the two
readers (`stores.loading`)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from stores import schema as S
from stores.errors import StoreError
from stores.integrity import lost_chunk_problem, read
from stores.loading import FeatureBank, StreamingReader


def _open_group(path: str | os.PathLike) -> zarr.Group:
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{p} does not exist; give the path of a feature store (NAME.zarr)")
    try:
        group = zarr.open_group(str(p), mode="r")
    except Exception:
        raise StoreError(f"{p} is not a zarr group; a feature store is a zarr v3 group (see docs/store-format.md, format v1)") from None
    return group


def _header_problems(group: zarr.Group) -> list[str]:
    attrs = dict(group.attrs).get(S.ATTRS_KEY)
    if not isinstance(attrs, dict):
        return ["attrs['bmnas'] is missing: not a bmnas feature store (see docs/store-format.md, format v1)"]
    problems = []
    if attrs.get("format") != S.FORMAT:
        problems.append(f"attrs['bmnas']['format'] is {attrs.get('format')!r}, expected {S.FORMAT!r}")
    if attrs.get("version") != S.VERSION:
        problems.append(f"attrs['bmnas']['version'] is {attrs.get('version')!r}; this bmnas reads version {S.VERSION}")
    if attrs.get("task") not in S.TASKS:
        problems.append(f"attrs['bmnas']['task'] is {attrs.get('task')!r}, expected one of {', '.join(S.TASKS)}")
    k = attrs.get("num_classes")
    if not isinstance(k, int) or k < 1:
        problems.append(f"attrs['bmnas']['num_classes'] is {k!r}, expected a positive integer")
    nodes = attrs.get("nodes")
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        problems.append("attrs['bmnas']['nodes'] must be a non-empty list of node names")
    elif len(set(nodes)) != len(nodes):
        problems.append(f"attrs['bmnas']['nodes'] has duplicate names: {nodes}")
    return problems


def _member(group: zarr.Group, name: str):
    """The array or group `name` of `group`, None when absent; a StoreError naming its metadata file
    when that file is not readable JSON (cut short or overwritten), instead of zarr's JSONDecodeError."""
    try:
        return group[name]
    except KeyError:
        return None
    except ValueError as exc:  # json.JSONDecodeError: the member's zarr.json is damaged
        meta = Path(str(getattr(group.store, "root", ""))) / group.path / name / "zarr.json"
        raise StoreError(f"{meta}: not readable JSON metadata ({exc}); the store is damaged: extract it again "
                         "(bmnas extract ... --overwrite) or restore it from a copy") from None


def _body_problems(group: zarr.Group, attrs: dict[str, Any]) -> list[str]:
    """Arrays, shapes, splits, labels and completeness; assumes the header is sound."""
    problems: list[str] = []
    sizes: dict[str, int] = {}
    for node in attrs["nodes"]:
        arr = _member(group, f"{S.FEATURES}/{node}")
        if arr is None or not isinstance(arr, zarr.Array):
            problems.append(f"features/{node} is missing (listed in attrs['bmnas']['nodes'])")
            continue
        if arr.ndim != 3 or 0 in arr.shape[1:]:
            problems.append(f"features/{node} has shape {arr.shape}, expected (N, C, T) with C, T >= 1")
        if str(arr.dtype) not in S.DTYPES:
            problems.append(f"features/{node} has dtype {arr.dtype}, expected float16 or float32")
        sizes[f"features/{node}"] = arr.shape[0]
    labels = _member(group, S.LABELS)
    if labels is None:
        problems.append("labels is missing")
    else:
        sizes[S.LABELS] = labels.shape[0]
    ids = _member(group, S.SAMPLE_IDS)
    if ids is not None:
        sizes[S.SAMPLE_IDS] = ids.shape[0]
    if len(set(sizes.values())) > 1:
        problems.append("N differs between arrays: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
        return problems
    n = next(iter(sizes.values()), 0)
    if labels is not None:
        problems += lost_chunk_problem(labels, S.LABELS, _label_fill_is_valid(labels.fill_value, attrs))
        problems += _label_problems(read(labels), attrs)
    if ids is not None:
        problems += lost_chunk_problem(ids, S.SAMPLE_IDS, True)
    problems += _split_problems(group, n)
    completion = _member(group, S.COMPLETION)
    if completion is not None:
        missing = np.flatnonzero(completion[...] == 0)
        if missing.size:
            problems.append(f"completion: {missing.size} row chunks were never completely written "
                            f"(first: {missing[:5].tolist()}); rerun the extraction to resume it")
    return problems


def _label_fill_is_valid(fill: Any, attrs: dict[str, Any]) -> bool:
    """Whether a lost labels chunk would read as a label that passes the range checks."""
    valid = range(attrs["num_classes"]) if attrs["task"] == "multiclass" else (0, 1)
    return fill in valid


def _label_problems(labels: np.ndarray, attrs: dict[str, Any]) -> list[str]:
    k = attrs["num_classes"]
    if attrs["task"] == "multiclass":
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            return [f"labels has shape {labels.shape} dtype {labels.dtype}; multiclass needs int64 (N,)"]
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            return [f"labels has values in [{labels.min()}, {labels.max()}], outside 0..{k - 1}"]
        return []
    if labels.ndim != 2 or labels.shape[1] != k:
        return [f"labels has shape {labels.shape}; multilabel needs multi-hot (N, {k})"]
    if not np.isin(labels, (0, 1)).all():
        return ["labels is not multi-hot: values other than 0 and 1"]
    return []


def _split_problems(group: zarr.Group, n: int) -> list[str]:
    splits = _member(group, S.SPLITS_GROUP)
    if splits is None or not isinstance(splits, zarr.Group) or not list(splits.array_keys()):
        return ["splits is missing: a store needs splits/train, splits/val and/or splits/test index arrays"]
    problems = []
    seen: dict[str, np.ndarray] = {}
    for name in sorted(splits.array_keys()):
        where = f"splits/{name}"
        fill = splits[name].fill_value
        lost = lost_chunk_problem(splits[name], where, isinstance(fill, (int, np.integer)) and 0 <= fill < n)
        if lost:
            problems += lost
            continue
        idx = read(splits[name])
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            problems.append(f"{where} must be a 1-D integer array, got shape {idx.shape} dtype {idx.dtype}")
            continue
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            problems.append(f"{where} has indices outside 0..{n - 1}")
        if idx.size > 1 and not (np.diff(idx) > 0).all():
            kind = "duplicates" if np.unique(idx).size < idx.size else "unsorted indices"
            problems.append(f"{where} is not sorted and unique ({kind})")
        for other, oidx in seen.items():
            common = np.intersect1d(idx, oidx)
            if common.size:
                problems.append(f"{where} overlaps splits/{other} in {common.size} rows (first: {common[:3].tolist()})")
        seen[name] = idx
    return problems


def validate_group(group: zarr.Group) -> list[str]:
    """All format-v1 problems of a store, one line each (empty when sound). No NaN scan."""
    problems = _header_problems(group)
    if problems:
        return problems
    return _body_problems(group, dict(group.attrs)[S.ATTRS_KEY])


class FeatureStore:
    """A validated, read-only store: metadata in memory, features read on demand."""

    def __init__(self, path: str | os.PathLike, group: zarr.Group) -> None:
        self.path = str(path)
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs)[S.ATTRS_KEY]
        self.task: str = self.attrs["task"]
        self.num_classes: int = int(self.attrs["num_classes"])
        self.class_names: list[str] | None = self.attrs.get("class_names")
        self.nodes: list[str] = list(self.attrs["nodes"])
        self.node_shapes: dict[str, tuple[int, int]] = {
            n: tuple(int(s) for s in self.array(n).shape[1:]) for n in self.nodes}  # type: ignore[misc]
        self.num_samples: int = int(group[S.LABELS].shape[0])
        splits = group[S.SPLITS_GROUP]
        self.splits: dict[str, np.ndarray] = {k: read(splits[k]).astype(np.int64) for k in sorted(splits.array_keys())}

    def __reduce__(self):
        return (open_store, (self.path,))

    def array(self, node: str) -> zarr.Array:
        self._check_nodes([node])
        return self.group[f"{S.FEATURES}/{node}"]

    def node_attrs(self, node: str) -> dict[str, Any]:
        return dict(self.array(node).attrs)

    @cached_property
    def labels_all(self) -> np.ndarray:
        return read(self.group[S.LABELS])

    def labels(self, split: str | None = None) -> np.ndarray:
        return self.labels_all if split is None else self.labels_all[self.split_rows(split)]

    @cached_property
    def sample_ids(self) -> np.ndarray | None:
        arr = _member(self.group, S.SAMPLE_IDS)
        return None if arr is None else read(arr)

    def split_rows(self, split: str) -> np.ndarray:
        if split not in self.splits:
            raise StoreError(f"{self.path} has no split {split!r} (it has: {', '.join(self.splits) or 'none'})")
        return self.splits[split]

    def _check_nodes(self, nodes: Sequence[str]) -> None:
        unknown = [n for n in nodes if n not in self.nodes]
        if unknown:
            raise StoreError(f"{self.path} has no node(s) {', '.join(unknown)}; it has {', '.join(self.nodes)}")

    def resolve_nodes(self, nodes: Sequence[str] | None) -> list[str]:
        nodes = list(self.nodes if nodes is None else nodes)
        self._check_nodes(nodes)
        return nodes

    def estimate_bytes(self, split: str, nodes: Sequence[str] | None = None) -> int:
        """Bytes that `bank(split, nodes)` holds in RAM as float32."""
        rows = len(self.split_rows(split))
        return sum(rows * c * t * 4 for c, t in (self.node_shapes[n] for n in self.resolve_nodes(nodes)))

    def bank(self, split: str, nodes: Sequence[str] | None = None) -> FeatureBank:
        return FeatureBank.load(self, split, self.resolve_nodes(nodes))

    def stream(self, split: str, nodes: Sequence[str] | None = None, window_chunks: int = 8) -> StreamingReader:
        return StreamingReader(self, split, self.resolve_nodes(nodes), window_chunks=window_chunks)

    def reader(self, split: str, nodes: Sequence[str] | None = None, memory_budget_bytes: int = 8 << 30):
        """RAM bank when it fits the budget, otherwise the chunk-shuffled streaming reader."""
        if self.estimate_bytes(split, nodes) <= memory_budget_bytes:
            return self.bank(split, nodes)
        return self.stream(split, nodes)


def open_store(path: str | os.PathLike) -> FeatureStore:
    """Open and validate a store; the StoreError names the array and what is wrong."""
    group = _open_group(path)
    problems = validate_group(group)
    if problems:
        more = f" (and {len(problems) - 1} more problems; run `bmnas store verify {path}`)" if len(problems) > 1 else ""
        raise StoreError(f"{path}: {problems[0]}{more}")
    return FeatureStore(path, group)
