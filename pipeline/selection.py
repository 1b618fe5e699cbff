"""The search's last choice: the searched candidates and the fixed fusions, re-scored alike, the best kept.

Why: on small real data the hypernet can pick inputs about as well as chance and lose to the obvious
fusion. Late fusion (the found Cells on each modality's deepest taps) and each modality alone (the
found Cells on one modality's taps) are scored with the very re-scoring runs the searched candidates
get, so a search returns the best-validated network and says which won, with every candidate's
validation mean ± std and the kept one's margin over late fusion (`RUN/candidates.json`). The
hypernet's own pick stays recorded (`searched_pick`), so the search itself stays measured.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from fusion_search.baselines import baseline_genotype, unimodal_genotype
from fusion_search.derive import node_modalities
from fusion_search.errors import SearchError
from fusion_search.genotype import Genotype

LATE = "late"
CANDIDATES = "candidates.json"


@dataclass(frozen=True)
class Candidate:
    """One scored network: a searched genotype (``seed_K``) or a fixed fusion (``late``, ``unimodal_M``)."""

    name: str
    kind: str  # "searched" or "fixed"
    genotype: dict[str, Any]
    scores: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0


def fixed_genotypes(template: Genotype) -> dict[str, Genotype]:
    """Late fusion and each modality alone, with the template's Cells, C and L (late fusion only
    where the nodes hold two modalities or more)."""
    modalities = sorted({m for n, m in zip(template.nodes, node_modalities(template.nodes)) if m != n})
    out: dict[str, Genotype] = {}
    if len(modalities) > 1:
        out[LATE] = baseline_genotype(LATE, list(template.nodes), template.task, template.num_classes,
                                      template=template)
    for m in modalities:
        try:
            out[f"unimodal_{m}"] = unimodal_genotype(m, template)
        except SearchError:  # a modality with one tap cannot feed a Cell's two inputs alone
            continue
    return out


def choose(candidates: Sequence[Candidate]) -> Candidate:
    """The best validation mean; on a tie the first listed (searched candidates come first). Means
    that differ only by float rounding (the same correct count summed in another order) are a tie."""
    if not candidates:
        raise SearchError("no candidate was scored")
    return max(candidates, key=lambda c: round(c.mean, 9))


def candidates_record(candidates: Sequence[Candidate], kept: Candidate, searched_pick: Candidate) -> dict[str, Any]:
    """What `candidates.json` holds: every candidate's scores, the kept one, its margin over late fusion."""
    late = next((c for c in candidates if c.name == LATE), None)
    return {
        "kept": kept.name, "kept_kind": kept.kind, "kept_mean": kept.mean, "kept_std": kept.std,
        "searched_pick": searched_pick.name,
        "margin_over_late": kept.mean - late.mean if late else None,
        "searched_margin_over_late": searched_pick.mean - late.mean if late else None,
        "candidates": [{"name": c.name, "kind": c.kind, "mean": c.mean, "std": c.std, "scores": list(c.scores),
                        "genotype": c.genotype} for c in candidates],
    }


def candidates_lines(candidates: Sequence[Candidate], kept: Candidate, searched_pick: Candidate) -> list[str]:
    """The CLI's last lines: each candidate's validation mean ± std, which was kept and by how much."""
    lines = [f"  {c.name:<18} {c.kind:<8} val {c.mean:.4f} ± {c.std:.4f} ({len(c.scores)} runs)"
             + ("  <- kept" if c is kept else "") for c in candidates]
    late = next((c for c in candidates if c.name == LATE), None)
    margin = f"; margin over late fusion {kept.mean - late.mean:+.4f}" if late else ""
    pick = "" if kept is searched_pick else f" (the search's own pick was {searched_pick.name})"
    lines.append(f"kept {kept.name} ({kept.kind}){pick}{margin}")
    return lines
