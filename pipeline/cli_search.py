"""`bmnas search`: BM-NAS architecture search on a feature store, into a run directory.

Settings: defaults < --config FILE.yaml < options given on the command line. `--resume RUN`
continues a killed search from its last epoch checkpoint with the run's own config.yaml.
"""

from __future__ import annotations

import click
from click.core import ParameterSource

from fusion_search.config import SearchConfig, config_from_mapping, load_config_file
from fusion_search.errors import SearchError
from fusion_search.search import load_run_config, run_search
from pipeline.cli_resume import accept_changed_store_option, check_resume_options
from pipeline.multistart import load_multistart, parse_seeds, run_multistart

# CLI option name -> SearchConfig field
_OPTIONS = {"store": "store", "cells": "cells", "steps": "steps", "channels": "channels", "length": "length",
            "multiplier": "multiplier", "epochs": "epochs", "batch_size": "batch_size", "seed": "seed",
            "unrolled": "unrolled", "step_inputs": "step_inputs", "nodes": "nodes", "device": "device",
            "arch_warmup_epochs": "arch_warmup_epochs", "candidates": "candidates", "score_seeds": "score_seeds",
            "cross_modal": "cross_modal", "op_variants": "op_variants", "modality_dropout": "modality_dropout",
            "compile": "compile"}


@click.command("search")
@click.option("--store", type=click.Path(), help="Feature store (zarr) with train and val splits.")
@click.option("--out", type=click.Path(), help="New run directory (config, log, metrics, checkpoints, genotype.json).")
@click.option("--cells", type=int, help="Number of Cells N (default 2).")
@click.option("--steps", type=int, help="Steps per Cell M (default 2).")
@click.option("--channels", type=int, help="Inner channels C (default 128).")
@click.option("--length", type=int, help="Inner sequence length L (default 8).")
@click.option("--multiplier", type=int, help="Inner nodes per Cell output and Cells into the head (default 2).")
@click.option("--epochs", type=int, help="Search epochs (default 30).")
@click.option("--batch-size", type=int, help="Batch size (default 96).")
@click.option("--seed", type=int, help="Seed: same seed, same genotype (CPU) (default 0).")
@click.option("--unrolled", is_flag=True, default=None, help="Second-order DARTS (finite-difference Hessian-vector product).")
@click.option("--step-inputs", type=click.Choice(["sum", "pair"]), help="How Steps are fed during search (default sum).")
@click.option("--arch-warmup-epochs", type=int,
              help="First epochs with weight steps only, α/β/γ frozen (default 0, as the paper).")
@click.option("--candidates", type=int,
              help="Genotypes scored per epoch: eq. 3's, then runner-up input pairs by α (default 1, as the paper).")
@click.option("--cross-modal", is_flag=True, default=None,
              help="A Cell that reads two store nodes reads two modalities (as MFAS pairs one feature of each).")
@click.option("--op-variants", is_flag=True, default=None,
              help="Also score each candidate with every Step set to one primitive (when γ cannot tell ops apart).")
@click.option("--modality-dropout", type=float,
              help="Probability that a sample loses one modality in weight, arch and scoring steps: searches for a "
                   "network that degrades gracefully when one is missing (default 0).")
@click.option("--compile", is_flag=True, default=None,
              help="torch.compile the hypernet for the weight and arch steps (first-order; a resume compiles again).")
@click.option("--score-seeds", type=int,
              help="Training runs averaged to score a genotype (default 3; one run is noisy).")
@click.option("--seeds", "seed_list", help="Multi-start: one search per seed (0-4 or 0,2,5) as dask tasks, "
              "the best re-scored genotype kept; each seed in OUT/seed_K.")
@click.option("--workers", type=int, help="Multi-start: LocalCluster workers (default: min(cores, seeds)).")
@click.option("--fixed-fusions/--no-fixed-fusions", default=True, show_default=True,
              help="Multi-start: also re-score late fusion and each modality alone on the found Cells and keep "
                   "the best-validated network (RUN/candidates.json says which won).")
@click.option("--scheduler", help="Multi-start: address of an existing dask scheduler instead of a LocalCluster.")
@click.option("--nodes", help="Comma-separated store nodes to search over (default: all).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to run (default auto).")
@click.option("--config", "config_file", type=click.Path(), help="YAML file of settings (keys as the options).")
@click.option("--resume", type=click.Path(), help="Continue the killed search in this run directory.")
@accept_changed_store_option
def search_cmd(config_file: str | None, resume: str | None, out: str | None, seed_list: str | None,
               workers: int | None, scheduler: str | None, fixed_fusions: bool, accept_changed_store: bool,
               **options) -> None:
    """Search a fusion architecture on cached features (BM-NAS, Algorithm 1)."""
    ctx = click.get_current_context()
    given = {k: v for k, v in options.items()
             if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE and v is not None}
    multistart = load_multistart(resume) if resume else None
    if resume:
        check_resume_options(resume)
        cfg = multistart[0] if multistart else load_run_config(resume)
        if "device" in given:
            cfg.device = given["device"]
        target = resume
    else:
        if not out:
            raise SearchError("--out: give a new run directory (or --resume RUN to continue one)")
        settings = dict(load_config_file(config_file)) if config_file else {}
        settings.update({_OPTIONS[k]: v for k, v in given.items()})
        cfg = config_from_mapping(settings, config_file or "options") if settings else SearchConfig()
        target = out
        if seed_list is not None:
            if "seed" in given:
                raise SearchError("--seed and --seeds: give one (--seeds runs one search per seed)")
            multistart = (cfg, parse_seeds(seed_list))
    if multistart:
        res = run_multistart(cfg, target, multistart[1], workers=workers, scheduler=scheduler, echo=click.echo,
                             fixed_fusions=fixed_fusions)
        click.echo(f"genotype of {res.selected.name} (val {res.selected.mean:.4f}): {res.genotype_path}")
        return
    if workers is not None or scheduler:
        raise SearchError("--workers/--scheduler run a multi-start search: add --seeds (e.g. --seeds 0-4)")
    result = run_search(cfg, target, resume=bool(resume), progress=True, accept_changed_store=accept_changed_store)
    click.echo(f"best genotype (epoch {result.best_epoch}, val score {result.best_score:.4f}): {result.genotype_path}")
