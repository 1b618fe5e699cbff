"""`bmnas train | finetune | evaluate | ablate | report` and `bmnas genotype baseline`."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from fusion_search.errors import SearchError
from pipeline.cli_resume import accept_changed_store_option, check_resume_options, given_device
from pipeline.configs import DEFAULT_EPOCHS, TRAIN_ON, FinetuneConfig, TrainConfig

_DEVICE = click.Choice(["auto", "cpu", "cuda"])
_T, _F = TrainConfig(), FinetuneConfig()  # the defaults of train's and finetune's options
_MODALITY_DROPOUT = click.option(
    "--modality-dropout", type=float, default=0.0, show_default=True,
    help="Probability that a training sample loses one of its modalities (chosen uniformly, never all).")
_SYNC_BN = click.option("--sync-bn", is_flag=True, default=False,
                        help="Under torchrun on GPUs: training BatchNorm layers normalise over the global batch.")


def _echo_metrics(metrics: dict | None, prefix: str = "") -> None:
    if not metrics:
        return
    shown = {k: v for k, v in metrics.items() if k not in ("split", "task", "run_kind")}
    click.echo(prefix + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))


@click.command("train")
@click.option("--store", type=click.Path(), help="Feature store (zarr) the genotype's nodes come from.")
@click.option("--genotype", "genotype_path", type=click.Path(), help="genotype.json (from search or `genotype baseline`).")
@click.option("--out", type=click.Path(), help="New run directory.")
@click.option("--epochs", type=int, default=None, help=f"Epochs (default {DEFAULT_EPOCHS}; required with --train-on train+val).")
@click.option("--batch-size", type=int, default=_T.batch_size, show_default=True)
@click.option("--seed", type=int, default=_T.seed, show_default=True)
@click.option("--device", type=_DEVICE, default=_T.device, show_default=True)
@click.option("--train-on", type=click.Choice(TRAIN_ON), default=_T.train_on, show_default=True,
              help="train: keep the best epoch on val; train+val: the paper's final protocol, fixed epochs.")
@click.option("--lr", type=float, default=_T.lr, show_default=True, help="Adam learning rate.")
@click.option("--resume", type=click.Path(), help="Continue the killed run in this directory.")
@_SYNC_BN
@_MODALITY_DROPOUT
@accept_changed_store_option
def train_cmd(store, genotype_path, out, epochs, batch_size, seed, device, train_on, lr, resume, sync_bn,
              modality_dropout, accept_changed_store) -> None:
    """Train a found network on cached features; evaluate its kept checkpoint on test."""
    from fusion_search.training.distributed import launched_rank
    from pipeline.train import resume_training, train_on_cache

    if resume:
        check_resume_options(resume)
        summary = resume_training(resume, progress=True, device=given_device(), accept_changed_store=accept_changed_store)
    else:
        for name, value in (("--store", store), ("--genotype", genotype_path), ("--out", out)):
            if not value:
                raise SearchError(f"{name}: required (or --resume RUN to continue a run)")
        summary = train_on_cache(store, genotype_path, out, epochs=epochs, batch_size=batch_size, seed=seed,
                                 device=device, train_on=train_on, lr=lr, progress=True, sync_bn=sync_bn,
                                 modality_dropout=modality_dropout, accept_changed_store=accept_changed_store)
    if launched_rank():  # under torchrun, rank 0 reports for all
        return
    click.echo(f"{summary['run_dir']}: {summary['num_parameters']:,} parameters, "
               f"checkpoint of epoch {summary['best_epoch']}")
    _echo_metrics(summary["test"], "test: ")


@click.command("evaluate")
@click.argument("run", type=click.Path())
@click.option("--split", default="test", show_default=True)
@click.option("--device", type=_DEVICE, default=None, help="Default: the run's device setting.")
@click.option("--batch-size", type=int, default=None)
@click.option("--robustness", is_flag=True, default=False,
              help="Also score the split with each modality missing in turn and with noise on each modality.")
@click.option("--noise-levels", default="0.5,1,2", show_default=True,
              help="With --robustness: noise sigmas, as multiples of each node's std on train.")
@accept_changed_store_option
def evaluate_cmd(run, split, device, batch_size, robustness, noise_levels, accept_changed_store) -> None:
    """Metrics, predictions, confusion matrix, parameters and latency of RUN on a split."""
    from pipeline.evaluate import evaluate_run
    from pipeline.robustness import parse_noise_levels, read_robustness, robustness_rows

    if not robustness and click.get_current_context().get_parameter_source("noise_levels") == ParameterSource.COMMANDLINE:
        raise SearchError("--noise-levels: only with --robustness")
    levels = parse_noise_levels(noise_levels) if robustness else None  # a bad level before any work
    metrics = evaluate_run(run, split, device=device, batch_size=batch_size, accept_changed_store=accept_changed_store,
                           robustness=levels)
    _echo_metrics(metrics, f"{split}: ")
    click.echo(f"wrote {run}/metrics_{split}.json, predictions_{split}.csv")
    if levels is not None:
        click.echo("\n".join(robustness_rows(read_robustness(Path(run), split))))
        click.echo(f"wrote {run}/robustness_{split}.json, robustness_{split}.png")


@click.command("ablate")
@click.option("--store", required=True, type=click.Path())
@click.option("--genotype", "genotype_path", required=True, type=click.Path(), help="The searched genotype.json.")
@click.option("--out", required=True, type=click.Path(), help="Directory (rerun to resume).")
@click.option("--seeds", type=int, default=5, show_default=True, help="Seeds 0..N-1 per row.")
@click.option("--epochs", type=int, default=None, help=f"Epochs per run (default {DEFAULT_EPOCHS}).")
@click.option("--batch-size", type=int, default=_T.batch_size, show_default=True)
@click.option("--device", type=_DEVICE, default=_T.device, show_default=True)
@click.option("--train-on", type=click.Choice(TRAIN_ON), default=_T.train_on, show_default=True)
@click.option("--workers", type=int, default=None, help="Dask workers (default: CPU count; 1: no dask).")
@click.option("--scheduler", default=None, help="Address of an existing dask scheduler.")
def ablate_cmd(store, genotype_path, out, seeds, epochs, batch_size, device, train_on, workers, scheduler) -> None:
    """Paper Tables 6 and 7 on this store: baselines vs the searched genotype, mean ± std over seeds."""
    from pipeline.ablate import run_ablation

    if seeds < 1:
        raise SearchError(f"--seeds {seeds}: use a positive count")
    path = run_ablation(store, genotype_path, out, seeds=seeds, epochs=epochs, batch_size=batch_size,
                        device=device, train_on=train_on, workers=workers, scheduler=scheduler)
    click.echo(path.read_text())
    click.echo(f"wrote {path}")


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), default=None, help="Comparison page (several runs).")
def report_cmd(runs, out) -> None:
    """A markdown page per run (curves, genotype, arch weights, metrics); a comparison for several."""
    from pipeline.report import write_report

    for p in write_report(list(runs), out):
        click.echo(f"wrote {p}")


@click.command("baseline")
@click.argument("name", type=click.Choice(["sum", "concatfc", "mha", "aoa", "late", "random"]))
@click.option("--store", required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Genotype JSON to write.")
@click.option("--like", type=click.Path(), default=None,
              help="Searched genotype (or its search run directory): the baseline takes its C, L and Cells; "
                   "fusion baselines keep its inputs, late/random keep its Cell structure.")
@click.option("--seed", type=int, default=0, show_default=True, help="random: which random selection.")
@click.option("--channels", "C", type=int, default=None, help="C without --like.  [default: 128]")
@click.option("--length", "L", type=int, default=None, help="L without --like.  [default: 8]")
@click.option("--cells", type=int, default=None, help="Cells without --like.  [default: 2]")
def baseline_cmd(name, store, output, like, seed, C, L, cells) -> None:
    """Write a named baseline (sum, concatfc, mha, aoa, late, random) as a genotype for STORE."""
    from fusion_search.baselines import baseline_for_store
    from fusion_search.genotype import Genotype, show
    from pipeline.runs import open_store_checked

    given = {"--channels": C, "--length": L, "--cells": cells}
    if like is not None:
        like = Path(like) / "genotype.json" if Path(like).is_dir() else Path(like)
        template = Genotype.load(like)
        theirs = {"--channels": template.C, "--length": template.L, "--cells": len(template.cells)}
        clash = [f"{k} {v} (the genotype has {theirs[k]})" for k, v in given.items() if v is not None and v != theirs[k]]
        if clash:
            raise SearchError(f"--like {like}: {', '.join(clash)}; a baseline is compared at its genotype's "
                              "settings, so drop those options or the --like")
        opened = open_store_checked(store, template, str(like))
    else:
        template = None
        from fusion_search.data import open_feature_store

        opened = open_feature_store(store)
        if any(v is None for v in given.values()):
            C, L, cells = C or 128, L or 8, cells or 2
            click.echo(f"note: no --like genotype, so C={C}, L={L}, {cells} Cells (the paper's sizes); to compare "
                       "with a search, pass --like RUN/genotype.json and the baseline takes its settings", err=True)
    sizes = {} if template is not None else {"C": C, "L": L, "cells": cells}  # a template gives its own
    g = baseline_for_store(name, opened, seed=seed, template=template, **sizes)
    g.save(output)
    click.echo(show(g))
    click.echo(f"wrote {output}")


@click.command("finetune")
@click.option("--store", type=click.Path(), default=None,
              help="Feature store the genotype was found on: its record gives backbones, checkpoints (sha256 "
                   "checked), taps, input, setting and reduction; the options below override it.")
@click.option("--genotype", "genotype_path", type=click.Path(), help="genotype.json of the fusion network.")
@click.option("--source", type=click.Path(), help="Raw dataset (folder, .hdf5 or manifest) the store was extracted from.")
@click.option("--kind", default=None, help="Dataset kind (detected when omitted).")
@click.option("--split", "split_preset", default=None, help="Split preset of the adapter (NTU: mfas, cross-subject, ...).")
@click.option("--source-opt", multiple=True, metavar="KEY=VALUE", help="Option for the dataset adapter (repeatable).")
@click.option("--backbone", "backbone_opts", multiple=True, metavar="MODALITY=SPEC",
              help="Backbone spec per modality, as extract takes it (repeatable).")
@click.option("--checkpoint", "checkpoint_opts", multiple=True, metavar="MODALITY=PATH",
              help="Pretrained checkpoint per modality, as extracted.")
@click.option("--taps", "tap_opts", multiple=True, metavar="MODALITY=A,B", help="Taps used at extraction.")
@click.option("--input", "input_opts", multiple=True, metavar="MODALITY=KEY=VALUE,...",
              help="Fields of a modality's prepared input, as extracted.")
@click.option("--setting", default=None, help=f"Backbone setting used at extraction (full/tiny).  [default: {_F.setting}]")
@click.option("--t-max", type=int, default=None, help=f"Reduction: cap on video/skeleton tap length.  [default: {_F.t_max}]")
@click.option("--grid", type=int, default=None, help=f"Reduction: image tap grid.  [default: {_F.grid}]")
@click.option("--init-from", type=click.Path(), default=None, help="`bmnas train` run whose fusion weights to start from.")
@click.option("--out", type=click.Path(), help="New run directory.")
@click.option("--epochs", type=int, default=None, help=f"Epochs (default {DEFAULT_EPOCHS}; required with --train-on train+val).")
@click.option("--batch-size", type=int, default=_F.batch_size, show_default=True)
@click.option("--accumulate", type=int, default=_F.accumulate, show_default=True, help="Batches per optimiser step.")
@click.option("--lr", type=float, default=_F.lr, show_default=True, help="Fusion network learning rate.")
@click.option("--backbone-lr-scale", type=float, default=_F.backbone_lr_scale, show_default=True, help="Backbone lr = this x --lr.")
@click.option("--loader-workers", type=int, default=_F.loader_workers, show_default=True, help="DataLoader worker processes (decoding).")
@click.option("--amp/--no-amp", default=_F.amp, show_default=True, help="float16 autocast on CUDA (ignored on CPU).")
@click.option("--device", type=_DEVICE, default=_F.device, show_default=True)
@click.option("--train-on", type=click.Choice(TRAIN_ON), default=_F.train_on, show_default=True)
@click.option("--seed", type=int, default=_F.seed, show_default=True)
@click.option("--resume", type=click.Path(), help="Continue the killed finetune run in this directory.")
@_SYNC_BN
@_MODALITY_DROPOUT
@accept_changed_store_option
def finetune_cmd(store, genotype_path, source, kind, split_preset, source_opt, backbone_opts, checkpoint_opts, tap_opts,
                 input_opts, setting, t_max, grid, init_from, out, epochs, batch_size, accumulate, lr,
                 backbone_lr_scale, loader_workers, amp, device, train_on, seed, resume, sync_bn,
                 modality_dropout, accept_changed_store) -> None:
    """Fine-tune backbones and the found fusion network jointly from raw data; evaluate on test."""
    from pipeline.cli_backbones import backbone_options
    from pipeline.cli_extract import _source_options
    from fusion_search.training.distributed import launched_rank
    from pipeline.finetune import finetune, resume_finetune

    if resume:
        check_resume_options(resume)
        summary = resume_finetune(resume, progress=True, device=given_device())
    else:
        for name, value in (("--genotype", genotype_path), ("--source", source), ("--out", out)):
            if not value:
                raise SearchError(f"{name}: required (or --resume RUN to continue a run)")
        if not backbone_opts and not store:
            raise SearchError("--store: give the feature store the genotype was found on (or --backbone "
                              "MODALITY=SPEC --checkpoint MODALITY=PATH for each modality it reads)")
        chosen = backbone_options(backbone_opts, checkpoint_opts, tap_opts, input_opts, require_backbone=not store)
        given = [{k: v for k, v in b.items() if v is not None} for b in chosen.values()]
        if setting is not None and not store:
            given = [{**b, "setting": setting} for b in given]
        reduction = {k: v for k, v in (("t_max", t_max), ("grid", grid)) if v is not None}
        summary = finetune(genotype_path, source, given, out, store=store, source_kind=kind,
                           source_split=split_preset, source_opts=_source_options(source_opt),
                           setting=setting or "full", setting_given=setting is not None, init_from=init_from,
                           epochs=epochs, batch_size=batch_size,
                           accumulate=accumulate, device=device, train_on=train_on, seed=seed, progress=True, lr=lr,
                           backbone_lr_scale=backbone_lr_scale, loader_workers=loader_workers, amp=amp,
                           sync_bn=sync_bn, modality_dropout=modality_dropout, accept_changed_store=accept_changed_store, **reduction)
    if launched_rank():  # under torchrun, rank 0 reports for all
        return
    click.echo(f"{summary['run_dir']}: {summary['num_parameters']:,} parameters "
               f"({summary['fusion_parameters']:,} fusion), checkpoint of epoch {summary['best_epoch']}")
    _echo_metrics(summary["test"], "test: ")
