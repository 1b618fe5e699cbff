"""Search configuration: defaults (paper + official code, see docs/design.md), YAML file, validation.

Precedence: defaults < `--config FILE.yaml` < explicit CLI options. The resolved config is written
to the run directory as `config.yaml` and is what `--resume` reads back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from fusion_search.errors import SearchError
from fusion_search.genotype import MAX_SIZES
from fusion_search.primitives import DEFAULT_PRIMITIVES, PRIMITIVES

SCORE_MODES = ("found", "hypernet")


@dataclass
class SearchConfig:
    """Everything that determines a search (with the store's contents and the seed: its result)."""

    store: str = ""
    nodes: list[str] | None = None          # None: all store nodes, in store order
    cells: int = 2                          # N
    steps: int = 2                          # M Steps per Cell
    channels: int = 128                     # C
    length: int = 8                         # L
    multiplier: int = 2
    primitives: list[str] = field(default_factory=lambda: list(DEFAULT_PRIMITIVES))
    step_inputs: str = "sum"                # sum | pair
    epochs: int = 30
    batch_size: int = 96
    seed: int = 0
    unrolled: bool = False                  # second-order DARTS
    dropout: float = 0.2
    weight_lr: float = 1e-3                 # Adam
    weight_lr_min: float = 1e-6             # cosine annealing with warm restarts ...
    restart_period: int = 1                 # ... T_0 (epochs)
    restart_mult: int = 2                   # ... T_mult
    weight_decay: float = 3e-4
    grad_clip: float = 5.0                  # max grad norm of weights (DARTS)
    arch_lr: float = 3e-4                   # Adam, betas (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    arch_warmup_epochs: int = 0             # weight steps only for this many first epochs (α, β, γ frozen)
    score: str = "found"                    # found: train the derived net briefly; hypernet: val metric of the hypernet
    score_epochs: int = 2                   # found-network training per genotype score ...
    score_min_steps: int = 300              # ... but at least this many optimiser steps (small splits)
    score_seeds: int = 3                    # ... averaged over this many training seeds (one run is noisy)
    candidates: int = 1                     # genotypes scored per epoch: eq. 3's, then runner-up pairs by α
    cross_modal: bool = False               # Cells that read two store nodes read two modalities (MFAS-style)
    op_variants: bool = False               # also score each candidate with every Step set to one primitive
    modality_dropout: float = 0.0           # P of a sample losing one modality, in weight, arch and scoring steps
    compile: bool = False                   # torch.compile the hypernet for the weight and arch steps
    device: str = "auto"
    plots: bool = True                      # write plots/ at the end (heatmaps of α, β, γ; metrics)
    memory_budget_gb: float | None = None   # None: half of the RAM

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(SearchConfig)}


def config_from_mapping(data: Mapping[str, Any], source: str) -> SearchConfig:
    """Build from a mapping; keys may use '-' or '_'; unknown keys are an error naming the file."""
    norm = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(norm) - FIELDS)
    if unknown:
        raise SearchError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
    cfg = SearchConfig(**norm)
    if isinstance(cfg.nodes, str):
        cfg.nodes = [n.strip() for n in cfg.nodes.split(",") if n.strip()]
    return cfg


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a YAML file (a mapping); SearchError names the file when it is not one."""
    p = Path(path)
    if not p.is_file():
        raise SearchError(f"--config {p}: file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SearchError(f"--config {p}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise SearchError(f"--config {p}: expected a mapping of settings (e.g. 'cells: 2')")
    return data


def _check_range(name: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise SearchError(f"--{name.replace('_', '-')} {value!r} is out of range: use an integer in {lo}..{hi}")


def validate(cfg: SearchConfig) -> None:
    """Range and consistency checks that need no store (store-dependent checks live in the search)."""
    _check_range("cells", cfg.cells, 1, 16)
    _check_range("steps", cfg.steps, 1, 8)
    _check_range("channels", cfg.channels, 1, MAX_SIZES["C"])
    _check_range("length", cfg.length, 1, MAX_SIZES["L"])
    _check_range("epochs", cfg.epochs, 1, 100000)
    _check_range("batch_size", cfg.batch_size, 1, 1 << 20)
    _check_range("arch_warmup_epochs", cfg.arch_warmup_epochs, 0, cfg.epochs - 1)
    _check_range("candidates", cfg.candidates, 1, 100)
    _check_range("score_epochs", cfg.score_epochs, 1, 1000)
    _check_range("score_min_steps", cfg.score_min_steps, 0, 10**7)
    _check_range("score_seeds", cfg.score_seeds, 1, 100)
    _check_range("multiplier", cfg.multiplier, 1, min(cfg.cells, cfg.steps + 2))
    if cfg.step_inputs not in ("sum", "pair"):
        raise SearchError(f"--step-inputs {cfg.step_inputs!r}: use sum or pair")
    if cfg.score not in SCORE_MODES:
        raise SearchError(f"score {cfg.score!r}: use one of {', '.join(SCORE_MODES)}")
    unknown = [p for p in cfg.primitives if p not in PRIMITIVES]
    if unknown or not cfg.primitives or len(set(cfg.primitives)) != len(cfg.primitives):
        raise SearchError(f"primitives {cfg.primitives!r}: list distinct names among {', '.join(PRIMITIVES)}")
    if all(p == "Zero" for p in cfg.primitives):
        raise SearchError("primitives: add at least one primitive besides Zero")
    if not 0.0 <= float(cfg.dropout) < 1.0:
        raise SearchError(f"dropout {cfg.dropout!r}: use a value in [0, 1)")
    if cfg.compile and cfg.unrolled:
        raise SearchError("--compile: first-order search only (the second-order step swaps weights in place); "
                          "drop --compile or --unrolled")
    if not 0.0 <= float(cfg.modality_dropout) < 1.0:
        raise SearchError(f"--modality-dropout {cfg.modality_dropout!r}: use a probability in [0, 1)")
