"""`bmnas train | finetune | evaluate | ablate | report` and `bmnas genotype baseline`."""

from __future__ import annotations

import click
from click.core import ParameterSource

from fusion_search.errors import SearchError

_DEVICE = click.Choice(["auto", "cpu", "cuda"])


def _echo_metrics(metrics: dict | None, prefix: str = "") -> None:
    if not metrics:
        return
    shown = {k: v for k, v in metrics.items() if k not in ("split", "task", "run_kind")}
    click.echo(prefix + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))


@click.command("train")
@click.option("--store", type=click.Path(), help="Feature store (zarr) the genotype's nodes come from.")
@click.option("--genotype", "genotype_path", type=click.Path(), help="genotype.json (from search or `genotype baseline`).")
@click.option("--out", type=click.Path(), help="New run directory.")
@click.option("--epochs", type=int, default=None, help="Epochs (default 30; required with --train-on train+val).")
@click.option("--batch-size", type=int, default=96, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=_DEVICE, default="auto", show_default=True)
@click.option("--train-on", type=click.Choice(["train", "train+val"]), default="train", show_default=True,
              help="train: keep the best epoch on val; train+val: the paper's final protocol, fixed epochs.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--resume", type=click.Path(), help="Continue the killed run in this directory.")
def train_cmd(store, genotype_path, out, epochs, batch_size, seed, device, train_on, lr, resume) -> None:
    """Train a found network on cached features; evaluate its kept checkpoint on test."""
    from pipeline.train import resume_training, train_on_cache

    if resume:
        ctx = click.get_current_context()
        given = [p for p in ("store", "genotype_path", "out", "epochs", "train_on")
                 if ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE]
        if given:
            raise SearchError(f"--resume {resume} continues with the run's own config.yaml; drop "
                              + ", ".join("--" + g.replace("_path", "").replace("_", "-") for g in given))
        summary = resume_training(resume, progress=True)
    else:
        for name, value in (("--store", store), ("--genotype", genotype_path), ("--out", out)):
            if not value:
                raise SearchError(f"{name}: required (or --resume RUN to continue a run)")
        summary = train_on_cache(store, genotype_path, out, epochs=epochs, batch_size=batch_size, seed=seed,
                                 device=device, train_on=train_on, lr=lr, progress=True)
    click.echo(f"{summary['run_dir']}: {summary['num_parameters']:,} parameters, "
               f"checkpoint of epoch {summary['best_epoch']}")
    _echo_metrics(summary["test"], "test: ")


@click.command("evaluate")
@click.argument("run", type=click.Path())
@click.option("--split", default="test", show_default=True)
@click.option("--device", type=_DEVICE, default=None, help="Default: the run's device setting.")
@click.option("--batch-size", type=int, default=None)
def evaluate_cmd(run, split, device, batch_size) -> None:
    """Metrics, predictions, confusion matrix, parameters and latency of RUN on a split."""
    from pipeline.evaluate import evaluate_run

    metrics = evaluate_run(run, split, device=device, batch_size=batch_size)
    _echo_metrics(metrics, f"{split}: ")
    click.echo(f"wrote {run}/metrics_{split}.json, predictions_{split}.csv")


@click.command("ablate")
@click.option("--store", required=True, type=click.Path())
@click.option("--genotype", "genotype_path", required=True, type=click.Path(), help="The searched genotype.json.")
@click.option("--out", required=True, type=click.Path(), help="Directory (rerun to resume).")
@click.option("--seeds", type=int, default=5, show_default=True, help="Seeds 0..N-1 per row.")
@click.option("--epochs", type=int, default=None, help="Epochs per run (default 30).")
@click.option("--batch-size", type=int, default=96, show_default=True)
@click.option("--device", type=_DEVICE, default="auto", show_default=True)
@click.option("--train-on", type=click.Choice(["train", "train+val"]), default="train", show_default=True)
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
              help="Searched genotype: fusion baselines keep its inputs, late/random keep its Cells.")
@click.option("--seed", type=int, default=0, show_default=True, help="random: which random selection.")
@click.option("--channels", "C", type=int, default=128, show_default=True)
@click.option("--length", "L", type=int, default=8, show_default=True)
@click.option("--cells", type=int, default=2, show_default=True)
def baseline_cmd(name, store, output, like, seed, C, L, cells) -> None:
    """Write a named baseline (sum, concatfc, mha, aoa, late, random) as a genotype for STORE."""
    from fusion_search.baselines import baseline_for_store
    from fusion_search.genotype import Genotype, show
    from pipeline.train import open_store_checked

    template = Genotype.load(like) if like else None
    if template is not None:
        opened = open_store_checked(store, template, like)
    else:
        from stores import StoreError, open_store

        try:
            opened = open_store(store)
        except StoreError as exc:
            raise SearchError(f"--store {store}: {exc}") from None
    g = baseline_for_store(name, opened, seed=seed, C=C, L=L, cells=cells, template=template)
    g.save(output)
    click.echo(show(g))
    click.echo(f"wrote {output}")
