"""Multi-start search (`bmnas search --seeds 0-4`): one search per seed as dask tasks, one kept genotype.

Why: a single search's outcome hangs on its seed (which batches the architecture steps see, which
genotype an epoch derives, how a short scoring run lands). K searches from K seeds, then one
selection among their best genotypes, turn that lottery into a choice. Every candidate is re-scored
the same way with fresh training runs (scoring runs FINAL_RUNS_FROM.., which no search uses), so a
search's optimistic maximum over its own epochs does not decide the selection.

Layout of RUN:
  multistart.yaml   the shared search settings (without seed), the seed list, the re-scoring runs
  seed_K/           an ordinary search run directory (resumable on its own with `--resume RUN/seed_K`)
  seed_K/final_score.json   the candidate's re-scores (reused on rerun)
  seeds.json        per seed: genotype, search score and epoch, re-scores and their mean; the kept seed
  fixed/NAME/final_score.json   the fixed fusions' re-scores (late fusion, each modality alone), with
                    `fixed_fusions` on (`pipeline.selection`)
  candidates.json   every scored candidate (searched and fixed): val mean ± std, the kept one, its
                    margin over late fusion, and the search's own pick
  genotype.json     the kept genotype: the best re-scored of all candidates

Rerunning the same command (or `bmnas search --resume RUN`) reuses finished seeds and resumes killed
ones from their last epoch checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable


from extract.cluster import connect, on_worker
from fusion_search.config import SearchConfig, config_from_mapping, validate
from fusion_search.errors import SearchError
from fusion_search.data import open_split, resolve_device
from fusion_search.genotype import Genotype
from fusion_search.training.run import rerun, settings_diff
from fusion_search.training.rundir import read_config
from fusion_search.search import run_search, score_runs
from pipeline.selection import CANDIDATES, Candidate, candidates_lines, candidates_record, choose, fixed_genotypes
from stores import open_store
from stores.device import usable_cores
from stores.files import write_json_atomic, write_yaml_atomic
from stores.lock import holds_lock

MANIFEST = "multistart.yaml"
FINAL_RUNS_FROM = 1000  # scoring-run indices of the re-scoring; a search uses 0 .. score_seeds-1
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,2,5' -> [0, 2, 5]; ranges and lists mix ('0-2,7')."""
    seeds: list[int] = []
    for part in str(text).split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise SearchError(f"--seeds {text!r}: use non-negative integers and ranges, e.g. 0-4 or 0,2,5")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise SearchError(f"--seeds {text!r}: range {part.strip()} runs backwards; write {hi}-{lo}")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise SearchError(f"--seeds {text!r}: a seed is listed twice")
    if not 2 <= len(seeds) <= 256:
        raise SearchError(f"--seeds {text!r}: give 2 to 256 seeds (one seed is `--seed`)")
    return seeds


@dataclass
class SeedOutcome:
    """One seed's search and the re-scores of the genotype it kept."""

    seed: int
    genotype: dict[str, Any]
    search_score: float
    search_epoch: int
    scores: list[float]

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)


@dataclass
class MultiStartResult:
    run_dir: Path
    genotype_path: Path
    genotype: Genotype
    kept: SeedOutcome  # the search's own pick: the best re-scored seed
    outcomes: list[SeedOutcome]
    selected: Candidate  # what genotype.json holds: the best of the searched and the fixed candidates
    candidates: list[Candidate]


def _shared_settings(cfg: SearchConfig) -> dict[str, Any]:
    """What every seed's run shares: everything but the seed."""
    d = cfg.to_dict()
    d.pop("seed")
    return d


def _final_runs(cfg: SearchConfig) -> int:
    return max(2, cfg.score_seeds)


def _check_manifest(root: Path, cfg: SearchConfig, seeds: list[int]) -> None:
    """A rerun into RUN must ask for the same search; a non-empty directory must be a multi-start run."""
    manifest = root / MANIFEST
    if root.exists() and not root.is_dir():
        raise SearchError(f"--out {root} is a file, not a run directory: give a directory path")
    if manifest.is_file():
        old = read_config(root, SearchError, name=MANIFEST)
        if settings_diff(old.get("search") or {}, _shared_settings(cfg)) or old.get("seeds") != seeds:
            raise SearchError(f"--out {root} holds a multi-start search with other settings or seeds; "
                              f"continue it with `bmnas search --resume {root}` or choose a new directory")
    elif root.exists() and any(root.iterdir()):
        raise SearchError(f"--out {root} exists and is not a multi-start run: choose a new run directory")


def load_multistart(run_dir: str | os.PathLike) -> tuple[SearchConfig, list[int]] | None:
    """The settings and seeds of a multi-start run directory; None when it is not one."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    data = read_config(run_dir, SearchError, name=MANIFEST)
    cfg = config_from_mapping({**data.get("search", {}), "seed": 0}, str(path))
    return cfg, [int(s) for s in data.get("seeds", [])]


@holds_lock("out", "run directory")
def run_multistart(cfg: SearchConfig, out: str | os.PathLike, seeds: list[int], *, workers: int | None = None,
                   scheduler: str | None = None, echo: Callable[[str], None] = print,
                   fixed_fusions: bool = True) -> MultiStartResult:
    """Search once per seed (dask tasks), re-score each seed's genotype and (with `fixed_fusions`) late
    fusion and each modality alone on the best seed's Cells, keep the best; see module doc."""
    validate(cfg)
    n_workers = workers if workers is not None else min(usable_cores(), len(seeds))
    if n_workers < 1:
        raise SearchError(f"--workers {workers}: use at least 1")
    root = Path(out)
    cfg = replace(cfg, store=os.path.abspath(cfg.store) if cfg.store else cfg.store)  # workers may run elsewhere
    _check_manifest(root, cfg, seeds)
    root.mkdir(parents=True, exist_ok=True)
    write_yaml_atomic(root / MANIFEST, {"seeds": seeds, "final_runs": _final_runs(cfg), "search": _shared_settings(cfg)})
    shared = cfg.to_dict()
    searches = [(shared, s, str(root / f"seed_{s}")) for s in seeds]
    if scheduler is None and n_workers == 1:
        found = [_report(echo, _search_seed(*a)) for a in searches]
        scores = {f["seed"]: _rescore(shared, f["genotype"], str(root / f"seed_{f['seed']}")) for f in found}
    else:
        try:
            with connect(scheduler, n_workers) as client:
                found, scores = _on_dask(client, searches, shared, root, echo)
        except ConnectionError as exc:
            raise SearchError(f"--scheduler {scheduler}: {exc}") from None
    outcomes = [SeedOutcome(f["seed"], f["genotype"], f["search_score"], f["search_epoch"], scores[f["seed"]])
                for f in sorted(found, key=lambda f: seeds.index(f["seed"]))]
    kept = max(outcomes, key=lambda o: o.mean)  # ties: the first seed listed
    write_json_atomic(root / "seeds.json", _summary(outcomes, kept))
    echo(multistart_table(outcomes, kept))
    searched = [Candidate(f"seed_{o.seed}", "searched", o.genotype, tuple(o.scores)) for o in outcomes]
    pick = searched[outcomes.index(kept)]
    fixed = fixed_candidates(Genotype.from_dict(kept.genotype, f"{root}/seed_{kept.seed}"), shared, root) \
        if fixed_fusions else []
    candidates = searched + fixed
    selected = choose(candidates)
    genotype = Genotype.from_dict(selected.genotype, f"{root}/{selected.name}")
    genotype.save(root / "genotype.json")
    write_json_atomic(root / CANDIDATES, candidates_record(candidates, selected, pick))
    for line in candidates_lines(candidates, selected, pick):
        echo(line)
    return MultiStartResult(root, root / "genotype.json", genotype, kept, outcomes, selected, candidates)


def fixed_candidates(template: Genotype, shared: dict, root: Path) -> list[Candidate]:
    """Late fusion and each modality alone on the template's Cells, re-scored as the searched ones are
    (the same runs; cached in RUN/fixed/NAME)."""
    out = []
    for name, g in fixed_genotypes(template).items():
        run = root / "fixed" / name
        run.mkdir(parents=True, exist_ok=True)
        out.append(Candidate(name, "fixed", g.to_dict(), tuple(_rescore(shared, g.to_dict(), str(run)))))
    return out


def _on_dask(client, searches, shared, root: Path, echo) -> tuple[list[dict], dict[int, list[float]]]:
    """Searches first; each finished search's re-scoring is submitted at once (same genotype: once)."""
    from distributed import as_completed

    futures = [client.submit(_search_seed, *a, pure=False) for a in searches]
    found, score_futures, by_key = [], {}, {}
    for fut in as_completed(futures):
        f = _report(echo, fut.result())
        found.append(f)
        key = Genotype.from_dict(f["genotype"], "search").key()
        if key not in by_key:
            by_key[key] = client.submit(_rescore, shared, f["genotype"], str(root / f"seed_{f['seed']}"), pure=False)
        score_futures[f["seed"]] = by_key[key]
    return found, {seed: fut.result() for seed, fut in score_futures.items()}


def _report(echo, found: dict) -> dict:
    echo(f"  seed {found['seed']}: search done, best genotype val {found['search_score']:.4f} "
         f"(epoch {found['search_epoch']})")
    return found


def _search_seed(shared: dict, seed: int, run_dir: str) -> dict:
    """One seed's search into its own run directory: resumed when it has a checkpoint, else started
    (an unstarted one a kill left is replaced by `Run.create`)."""
    on_worker()
    cfg = SearchConfig(**{**shared, "seed": seed})
    res = rerun(run_dir, lambda: run_search(cfg, run_dir), lambda: run_search(cfg, run_dir, resume=True))
    return {"seed": seed, "genotype": res.genotype.to_dict(), "search_score": res.best_score,
            "search_epoch": res.best_epoch}


def _rescore(shared: dict, genotype_dict: dict, run_dir: str) -> list[float]:
    """Val scores of fresh scoring runs of one genotype (cached in the seed's run directory)."""
    on_worker()
    cfg = SearchConfig(**shared)
    genotype = Genotype.from_dict(genotype_dict, run_dir)
    cache = Path(run_dir) / "final_score.json"
    key = {"genotype": genotype.key(), "runs": _final_runs(cfg), "first": FINAL_RUNS_FROM,
           "min_steps": cfg.score_min_steps, "epochs": cfg.score_epochs}
    if cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return data["scores"]
    store = open_store(cfg.store)
    device = resolve_device(cfg.device)
    nodes = genotype.used_nodes()
    train, val = (open_split(store, s, nodes, device) for s in ("train", "val"))
    scores = score_runs(cfg, genotype, train, val, store.node_shapes, store.task, runs=_final_runs(cfg),
                        first=FINAL_RUNS_FROM)
    write_json_atomic(cache, {"key": key, "scores": scores}, indent=None)
    return scores


def _noise(outcomes: list[SeedOutcome]) -> float:
    """Pooled std of one scoring run around its genotype's mean (how far one run can mislead)."""
    import numpy as np

    dev = [s - o.mean for o in outcomes for s in o.scores]
    dof = sum(len(o.scores) - 1 for o in outcomes)
    return float(np.sqrt(np.sum(np.square(dev)) / dof)) if dof > 0 else float("nan")


def _summary(outcomes: list[SeedOutcome], kept: SeedOutcome) -> dict[str, Any]:
    return {"kept_seed": kept.seed, "kept_score": kept.mean, "score_noise_std": _noise(outcomes),
            "seeds": [{"seed": o.seed, "score": o.mean, "scores": o.scores, "search_score": o.search_score,
                       "epoch": o.search_epoch, "genotype": o.genotype} for o in outcomes]}


def _cells_text(genotype: dict) -> str:
    return "; ".join(f"({', '.join(c['inputs'])}) {'+'.join(s['op'] for s in c['steps'])}" for c in genotype["cells"])


def multistart_table(outcomes: list[SeedOutcome], kept: SeedOutcome) -> str:
    """A markdown table of every seed's candidate and the kept one."""
    lines = ["| seed | search score (epoch) | re-scored val (runs) | cells |", "|---:|---:|---:|---|"]
    for o in outcomes:
        mark = " **kept**" if o is kept else ""
        lines.append(f"| {o.seed}{mark} | {o.search_score:.3f} ({o.search_epoch}) | {o.mean:.3f} ({len(o.scores)}) "
                     f"| {_cells_text(o.genotype)} |")
    lines.append(f"\nscore noise (std of one scoring run): {_noise(outcomes):.3f}")
    return "\n".join(lines)
