"""Draw a genotype like the paper's Fig. 3/5: input features -> Cells (x, y, Steps) -> head.

`.dot` is written as Graphviz source; `.png`/`.svg` go through the `dot` binary when it is on PATH,
otherwise through a matplotlib drawing of the same graph (layered by depth), so rendering needs no
Python graphviz package and works on machines without Graphviz.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from fusion_search.errors import SearchError
from fusion_search.genotype import Genotype, cell_name, inner_name
from stores.files import write_text_atomic

FORMATS = ("png", "svg", "dot")
_COLORS = {"input": "#cfe2f3", "inner": "#fff2cc", "step": "#f4cccc", "cell": "#d9ead3", "head": "#eeeeee"}


@dataclass
class Graph:
    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (label, kind)
    edges: list[tuple[str, str]] = field(default_factory=list)
    clusters: dict[str, list[str]] = field(default_factory=dict)    # cell name -> member ids


def genotype_graph(g: Genotype) -> Graph:
    """Nodes and edges of the found network (only the input features some Cell reads)."""
    gr = Graph()
    for n in g.used_nodes():
        gr.nodes[f"in:{n}"] = (n, "input")
    for k, cell in enumerate(g.cells):
        name = cell_name(k)
        ids = [f"{name}:{inner_name(i)}" for i in range(2 + len(cell.steps))]
        gr.nodes[ids[0]] = ("x", "inner")
        gr.nodes[ids[1]] = ("y", "inner")
        for src, dst in zip(cell.inputs, ids[:2]):
            gr.edges.append((f"in:{src}" if src in g.nodes else f"{src}:out", dst))
        for m, step in enumerate(cell.steps):
            gr.nodes[ids[2 + m]] = (f"step_{m + 1}\n{step.op}", "step")
            for i in dict.fromkeys(step.inputs):
                gr.edges.append((ids[i], ids[2 + m]))
        gr.nodes[f"{name}:out"] = (name, "cell")
        for i in cell.concat:
            gr.edges.append((ids[i], f"{name}:out"))
        gr.clusters[name] = ids + [f"{name}:out"]
    gr.nodes["head"] = (f"head\n{g.num_classes} classes", "head")
    for name in g.output:
        gr.edges.append((f"{name}:out", "head"))
    return gr


def to_dot(g: Genotype) -> str:
    """Graphviz source of the genotype."""
    gr = genotype_graph(g)
    q = lambda s: '"' + s.replace('"', r'\"').replace("\n", r"\n") + '"'  # noqa: E731
    lines = ["digraph genotype {", "  rankdir=LR;", '  node [style=filled, fontname="Helvetica", fontsize=10];']
    in_cluster = {i for ids in gr.clusters.values() for i in ids}
    for nid, (label, kind) in gr.nodes.items():
        if nid not in in_cluster:
            shape = "ellipse" if kind == "input" else "box"
            lines.append(f"  {q(nid)} [label={q(label)}, shape={shape}, fillcolor={q(_COLORS[kind])}];")
    for c, ids in gr.clusters.items():
        lines.append(f"  subgraph {q('cluster_' + c)} {{")
        lines.append(f"    label={q(c)}; style=rounded;")
        for nid in ids:
            label, kind = gr.nodes[nid]
            lines.append(f"    {q(nid)} [label={q(label)}, shape=box, fillcolor={q(_COLORS[kind])}];")
        lines.append("  }")
    for a, b in gr.edges:
        lines.append(f"  {q(a)} -> {q(b)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _depths(gr: Graph) -> dict[str, int]:
    depth = {n: 0 for n in gr.nodes}
    for _ in range(len(gr.nodes)):  # longest-path layering; the graph is a DAG
        changed = False
        for a, b in gr.edges:
            if depth[b] < depth[a] + 1:
                depth[b] = depth[a] + 1
                changed = True
        if not changed:
            break
    return depth


def _draw_matplotlib(g: Genotype, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gr = genotype_graph(g)
    depth = _depths(gr)
    columns: dict[int, list[str]] = {}
    for nid in gr.nodes:
        columns.setdefault(depth[nid], []).append(nid)
    pos = {}
    for d, ids in columns.items():
        for r, nid in enumerate(ids):
            pos[nid] = (d * 2.2, -(r - (len(ids) - 1) / 2) * 1.1)
    tall = max(len(v) for v in columns.values())
    fig, ax = plt.subplots(figsize=(2.0 + 1.9 * len(columns), 1.2 + 0.9 * tall))
    for a, b in gr.edges:
        bend = -0.3 if depth[b] - depth[a] > 1 else 0.0  # long edges arc around the nodes they skip
        ax.annotate("", xy=pos[b], xytext=pos[a],
                    arrowprops=dict(arrowstyle="->", color="#555555", shrinkA=22, shrinkB=22, lw=0.9,
                                    connectionstyle=f"arc3,rad={bend}"))
    for nid, (label, kind) in gr.nodes.items():
        x, y = pos[nid]
        cluster = next((c for c, ids in gr.clusters.items() if nid in ids and kind in ("inner", "step")), None)
        text = f"{cluster}.{label}" if cluster else label
        ax.text(x, y, text, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.35", fc=_COLORS[kind], ec="#444444", lw=0.8))
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 1.2, max(xs) + 1.2)
    ax.set_ylim(min(ys) - 0.9, max(ys) + 0.9)
    ax.axis("off")
    ax.set_title(f"BM-NAS genotype ({g.task}, C={g.C}, L={g.L})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)


def render(g: Genotype, out: str | Path, engine: str = "auto") -> str:
    """Write `out` (.png, .svg or .dot); returns the engine used: 'dot', 'matplotlib' or 'source'."""
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise SearchError(f"-o {out}: unsupported extension; use one of {', '.join('.' + f for f in FORMATS)}")
    if not out.parent.exists():
        raise SearchError(f"-o {out}: folder {out.parent} does not exist")
    if fmt == "dot":
        write_text_atomic(out, to_dot(g))
        return "source"
    dot = shutil.which("dot") if engine in ("auto", "dot") else None
    if engine == "dot" and dot is None:
        raise SearchError("--engine dot: Graphviz `dot` is not on PATH (install graphviz or use --engine matplotlib)")
    if dot:
        subprocess.run([dot, f"-T{fmt}", "-o", str(out)], input=to_dot(g).encode(), check=True)
        return "dot"
    _draw_matplotlib(g, out)
    return "matplotlib"
