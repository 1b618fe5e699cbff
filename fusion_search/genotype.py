"""Genotype format v2: the discrete fusion network a search finds, as validated JSON.

```
{"format": "bmnas-genotype", "version": 2, "task": "multiclass", "num_classes": 60,
 "nodes": ["video_1", ..., "skeleton_4"], "C": 128, "L": 8, "multiplier": 2,
 "cells": [{"inputs": ["video_4", "skeleton_2"],
            "steps": [{"op": "ConcatFC", "inputs": [0, 1]}, {"op": "Attention", "inputs": [2, 1]}],
            "concat": [2, 3]}, ...],
 "output": ["cell_1", "cell_2"],
 "provenance": {"video_4": {"backbone": "inflated_resnet50", "layer": "pool",
                            "checkpoint_sha256": "9f2c..."}, ...}}
```
Cell inputs name store nodes or earlier cells (`cell_k`, 1-based) and become the Cell's x and y;
step inputs index the Cell's inner nodes [x, y, step_1, ...]; `concat` lists the inner nodes the
Cell output concatenates; `output` lists the cells the classifier head concatenates. `provenance`
(optional; v2) says what each node it reads was in the store it was found on, so a store where
`video_1` is another layer is refused (`check_provenance`). Version 1 files (no provenance) load.
Equality and `key` are the architecture's alone (provenance aside; `key` keeps its v1 text, so the
scores and seeds derived from it are what they were).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from fusion_search.errors import SearchError
from fusion_search.primitives import PRIMITIVES
from stores.files import write_text_atomic

FORMAT = "bmnas-genotype"
VERSION = 2
READS = (1, 2)
PROVENANCE_KEYS = ("backbone", "layer", "checkpoint_sha256")
TASKS = ("multiclass", "multilabel")
_KEYS = ("format", "version", "task", "num_classes", "nodes", "C", "L", "multiplier", "cells", "output")
_OPTIONAL = ("provenance",)


@dataclass(frozen=True)
class StepGene:
    """One Step: a primitive applied to two inner nodes of its Cell (x = inputs[0], y = inputs[1])."""

    op: str
    inputs: tuple[int, int]


@dataclass(frozen=True)
class CellGene:
    """One Cell: its two predecessors (x, y), its Steps and the inner nodes its output concatenates."""

    inputs: tuple[str, str]
    steps: tuple[StepGene, ...]
    concat: tuple[int, ...]


@dataclass(frozen=True)
class Genotype:
    """A whole found fusion network (format v2)."""

    task: str
    num_classes: int
    nodes: tuple[str, ...]
    C: int
    L: int
    multiplier: int
    cells: tuple[CellGene, ...]
    output: tuple[str, ...]
    provenance: dict[str, dict[str, Any]] | None = field(default=None, compare=False, hash=False)

    def _architecture(self, version: int) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": version, "task": self.task, "num_classes": self.num_classes,
            "nodes": list(self.nodes), "C": self.C, "L": self.L, "multiplier": self.multiplier,
            "cells": [{"inputs": list(c.inputs),
                       "steps": [{"op": s.op, "inputs": list(s.inputs)} for s in c.steps],
                       "concat": list(c.concat)} for c in self.cells],
            "output": list(self.output),
        }

    def to_dict(self) -> dict[str, Any]:
        out = self._architecture(VERSION)
        if self.provenance:
            out["provenance"] = {n: dict(p) for n, p in self.provenance.items()}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def key(self) -> str:
        """Canonical compact text of the architecture (equal genotypes, equal keys; the v1 text, so
        the seeds and cached scores derived from it do not change with the format)."""
        return json.dumps(self._architecture(1), sort_keys=True, separators=(",", ":"))

    def with_provenance(self, node_attrs: Callable[[str], dict[str, Any]]) -> "Genotype":
        """This genotype with the provenance of the nodes it reads (`node_attrs(node)`: the store's attrs)."""
        prov = {n: {k: node_attrs(n).get(k) for k in PROVENANCE_KEYS} for n in self.used_nodes()}
        prov = {n: p for n, p in prov.items() if any(v is not None for v in p.values())}
        return replace(self, provenance=prov or None)

    def used_nodes(self) -> list[str]:
        """Store nodes some Cell reads, in `nodes` order."""
        used = {name for c in self.cells for name in c.inputs}
        return [n for n in self.nodes if n in used]

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (a killed run never leaves half a genotype file)."""
        write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: Any, source: str = "genotype") -> "Genotype":
        """Validate and build; SearchError names `source` and the offending field."""
        return _parse(data, source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Genotype":
        path = Path(path)
        if not path.is_file():
            raise SearchError(f"{path}: genotype file not found (give the genotype.json a search wrote)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SearchError(f"{path}: not a JSON genotype file ({exc})") from None
        return _parse(data, str(path))


def cell_name(k: int) -> str:
    """Name of the k-th Cell (0-based k) as genotypes write it: cell_1, cell_2, ..."""
    return f"cell_{k + 1}"


# the largest sizes a genotype may ask for: a network of C = 1e9 would exhaust memory, not train
MAX_SIZES = {"num_classes": 100_000, "C": 4096, "L": 1024, "multiplier": 64}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse(data: Any, src: str) -> Genotype:
    def bad(msg: str) -> SearchError:
        return SearchError(f"{src}: {msg}")

    _check_header(data, bad)
    nodes = data["nodes"]
    if not isinstance(data["cells"], list) or not data["cells"]:
        raise bad("cells must be a non-empty list")
    cells = [_parse_cell(k, cell, nodes, bad) for k, cell in enumerate(data["cells"])]
    out = data["output"]
    names = [cell_name(k) for k in range(len(cells))]
    if not isinstance(out, list) or not out or not all(o in names for o in out) or len(set(out)) != len(out):
        raise bad(f"output must list distinct cells among {', '.join(names)}")
    return Genotype(data["task"], data["num_classes"], tuple(nodes), data["C"], data["L"], data["multiplier"],
                    tuple(cells), tuple(out), _parse_provenance(data.get("provenance"), nodes, bad))


def _parse_provenance(prov: Any, nodes: list[str], bad: Callable[[str], SearchError]) -> dict | None:
    if prov is None:
        return None
    if not isinstance(prov, dict) or not all(n in nodes and isinstance(p, dict) for n, p in prov.items()):
        raise bad("provenance must map node names of `nodes` to objects (backbone, layer, checkpoint_sha256)")
    return {n: {k: p.get(k) for k in PROVENANCE_KEYS} for n, p in prov.items()}


def _check_header(data: Any, bad: Callable[[str], SearchError]) -> None:
    """Format, version, the fields, task, sizes and node names: everything but the cells."""
    if not isinstance(data, dict):
        raise bad("expected a JSON object with \"format\": \"bmnas-genotype\"")
    if data.get("format") != FORMAT:
        raise bad(f"format is {data.get('format')!r}, expected {FORMAT!r} (is this a genotype file?)")
    if data.get("version") not in READS:
        raise bad(f"genotype format version {data.get('version')!r} is not supported; this bmnas reads versions "
                  f"{', '.join(map(str, READS))}")
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise bad(f"missing field(s) {', '.join(missing)}")
    if data["version"] == 1 and "provenance" in data:
        raise bad("provenance is a field of version 2; write version 2")
    unknown = sorted(set(data) - set(_KEYS) - set(_OPTIONAL))
    if unknown:
        raise bad(f"unknown field(s) {', '.join(unknown)}")
    if data["task"] not in TASKS:
        raise bad(f"task {data['task']!r} is not one of {', '.join(TASKS)}")
    for k, most in MAX_SIZES.items():
        if not _is_int(data[k]) or not 1 <= data[k] <= most:
            raise bad(f"{k} must be an integer in 1..{most}, got {data[k]!r}")
    nodes = data["nodes"]
    if (not isinstance(nodes, list) or len(nodes) < 1 or not all(isinstance(n, str) and n for n in nodes)
            or len(set(nodes)) != len(nodes)):
        raise bad("nodes must be a non-empty list of distinct node names")
    if any(n.startswith("cell_") for n in nodes):
        raise bad("node names may not start with 'cell_' (reserved for cells)")


def _parse_cell(k: int, cell: Any, nodes: list[str], bad: Callable[[str], SearchError]) -> CellGene:
    """Cell k: two predecessors among the nodes and earlier cells, its Steps, its concat."""
    where = f"cells[{k}]"
    if not isinstance(cell, dict) or set(cell) != {"inputs", "steps", "concat"}:
        raise bad(f"{where} must have exactly the fields inputs, steps, concat")
    preds = list(nodes) + [cell_name(j) for j in range(k)]
    ins = cell["inputs"]
    if not isinstance(ins, list) or len(ins) != 2:
        raise bad(f"{where}.inputs must list two predecessors")
    for name in ins:
        if name not in preds:
            raise bad(f"{where}.inputs names {name!r}, which is neither one of nodes nor an earlier cell")
    steps = cell["steps"]
    if not isinstance(steps, list) or not steps:
        raise bad(f"{where}.steps must be a non-empty list")
    genes = [_parse_step(f"{where}.steps[{m}]", m, step, bad) for m, step in enumerate(steps)]
    concat = cell["concat"]
    n_inner = 2 + len(steps)
    if (not isinstance(concat, list) or not concat or len(set(map(str, concat))) != len(concat)
            or not all(_is_int(i) and 0 <= i < n_inner for i in concat)):
        raise bad(f"{where}.concat must list distinct inner-node indices in 0..{n_inner - 1}")
    return CellGene((ins[0], ins[1]), tuple(genes), tuple(concat))


def _parse_step(where: str, m: int, step: Any, bad: Callable[[str], SearchError]) -> StepGene:
    if not isinstance(step, dict) or set(step) != {"op", "inputs"}:
        raise bad(f"{where} must have exactly the fields op, inputs")
    if step["op"] not in PRIMITIVES:
        raise bad(f"{where}.op {step['op']!r} is not a primitive ({', '.join(PRIMITIVES)})")
    si = step["inputs"]
    if not isinstance(si, list) or len(si) != 2 or not all(_is_int(i) and 0 <= i < 2 + m for i in si):
        raise bad(f"{where}.inputs must be two inner-node indices in 0..{1 + m} (x, y, earlier steps)")
    return StepGene(step["op"], (si[0], si[1]))


def check_against_store(genotype: Genotype, store_nodes: Sequence[str], task: str, num_classes: int,
                        source: str = "genotype") -> None:
    """A genotype can run on a store only if the store has every node it reads and the same task."""
    missing = [n for n in genotype.used_nodes() if n not in store_nodes]
    if missing:
        raise SearchError(f"{source} reads node(s) {', '.join(missing)} that the store lacks "
                          f"(store nodes: {', '.join(store_nodes)})")
    if genotype.task != task or genotype.num_classes != num_classes:
        raise SearchError(f"{source} was found for {genotype.task} with {genotype.num_classes} classes; "
                          f"the store is {task} with {num_classes} classes")


def check_provenance(genotype: Genotype, node_attrs: Callable[[str], dict[str, Any]], source: str = "genotype",
                     accept_changed: bool = False) -> None:
    """Refuse a store whose nodes are not what the genotype was found on (another layer, backbone or
    checkpoint under the same node name), naming the node; `accept_changed` lets a user go on."""
    for node, was in (genotype.provenance or {}).items():
        now = {k: node_attrs(node).get(k) for k in PROVENANCE_KEYS}
        diff = [k for k in PROVENANCE_KEYS if was.get(k) is not None and now.get(k) is not None and was[k] != now[k]]
        if diff and not accept_changed:
            raise SearchError(f"{source}: node {node} was {_what(was)} in the store it was found on, and is "
                              f"{_what(now)} in this one ({', '.join(diff)} differ); search again on this store, or "
                              "pass --accept-changed-store to go on")


def _what(p: dict[str, Any]) -> str:
    sha = f", checkpoint {str(p['checkpoint_sha256'])[:12]}" if p.get("checkpoint_sha256") else ""
    return f"{p.get('layer')} of {p.get('backbone')}{sha}"


def inner_name(i: int) -> str:
    """Readable name of inner node i of a Cell: x, y, step_1, ..."""
    return ("x", "y")[i] if i < 2 else f"step_{i - 1}"


def show(genotype: Genotype) -> str:
    """The genotype as a readable tree (what `bmnas genotype show` prints)."""
    g = genotype
    lines = [f"{FORMAT} v{VERSION}: {g.task}, {g.num_classes} classes, C={g.C}, L={g.L}, multiplier={g.multiplier}",
             f"nodes: {', '.join(g.nodes)}"]
    for k, cell in enumerate(g.cells):
        last_cell = k == len(g.cells) - 1
        lines.append(f"{'└' if last_cell else '├'}── {cell_name(k)}  (x = {cell.inputs[0]}, y = {cell.inputs[1]})")
        bar = " " if last_cell else "│"
        for m, step in enumerate(cell.steps):
            a, b = (inner_name(i) for i in step.inputs)
            lines.append(f"{bar}   ├── step_{m + 1} = {step.op}({a}, {b})")
        lines.append(f"{bar}   └── out = proj(concat[{', '.join(inner_name(i) for i in cell.concat)}])")
    lines.append(f"head: linear(concat[{', '.join(g.output)}]) -> {g.num_classes} {g.task} logits")
    return "\n".join(lines)
