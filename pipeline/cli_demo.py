"""`bmnas demo`: the whole pipeline end to end on embedded synthetic data."""

from __future__ import annotations

import click

from pipeline.demo import DemoConfig, run_demo


@click.command("demo")
@click.option("--out", default=DemoConfig.out, show_default=True, type=click.Path(file_okay=False),
              help="Working directory; stages already done there are reused.")
@click.option("--samples", default=DemoConfig.samples, show_default=True, help="Synthetic samples.")
@click.option("--seed", default=DemoConfig.seed, show_default=True)
@click.option("--quick", is_flag=True, help="A smaller run (300 samples, fewer epochs) for a smoke check.")
def demo_cmd(out: str, samples: int, seed: int, quick: bool) -> None:
    """Synthetic data → pretrain → extract (dask) → search → train → evaluate → comparison table."""
    cfg = DemoConfig(out=out, samples=samples, seed=seed)
    if quick:
        cfg = DemoConfig.quick(out=out, seed=seed)
    run_demo(cfg)
