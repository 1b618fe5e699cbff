"""The `bmnas` command: a click group with one subcommand (or group) per stage.

Stages are imported only when invoked (`bmnas store info` does not pay for importing torch), and
`bmnas --help` lists them from the table below without importing any. User errors (bad paths,
bad stores, bad options) become one line on stderr and exit status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from pipeline import __version__
from pipeline.errors import user_errors
from stores.files import disk_full

# Idle OpenMP threads sleep instead of spinning: on a busy machine spinning threads steal the cores
# their partners need and make torch steps several times slower (bench/search_step.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# name -> (module, attribute, one help line), in pipeline order
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("pipeline.cli_data", "data", "Raw datasets: synthetic generators, dataset summaries, one-off preparation."),
    "backbones": ("pipeline.cli_backbones", "backbones_cmd", "List backbones and their taps; `show SPEC` probes one."),
    "pretrain": ("pipeline.cli_extract", "pretrain_cmd", "Stage 1: train one backbone + head on one modality."),
    "extract": ("pipeline.cli_extract", "extract_cmd", "Stage 1: frozen backbones -> reduced taps -> feature store (dask)."),
    "store": ("pipeline.cli_store", "store", "Inspect and verify feature stores (zarr, format v1)."),
    "search": ("pipeline.cli_search", "search_cmd", "Stage 2: BM-NAS fusion search on cached features."),
    "genotype": ("pipeline.cli_genotype", "genotype", "Show, render and build genotypes (incl. baselines)."),
    "train": ("pipeline.cli_train", "train_cmd", "Stage 3: train a found network on cached features."),
    "finetune": ("pipeline.cli_train", "finetune_cmd", "Stage 3: fine-tune backbones + fusion from raw data."),
    "evaluate": ("pipeline.cli_train", "evaluate_cmd", "Test metrics, predictions, confusion matrix, latency."),
    "ablate": ("pipeline.cli_train", "ablate_cmd", "Paper Tables 6 and 7 (features / fusion ablations)."),
    "report": ("pipeline.cli_train", "report_cmd", "Markdown report of one or more runs."),
    "demo": ("pipeline.cli_demo", "demo_cmd", "The whole pipeline on embedded synthetic data."),
}


class BmnasGroup(click.Group):
    """Lazily imported stage commands; project errors become one line with exit status 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_line) for name, (_, _, help_line) in COMMANDS.items()])

    def invoke(self, ctx: click.Context):  # noqa: D401 - click API
        try:
            return super().invoke(ctx)
        except user_errors() as exc:  # type: ignore[misc]
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except OSError as exc:  # a full disk is the machine's state, not a bug: every stage keeps what is complete
            if not disk_full(exc):
                raise
            click.echo(f"error: no space left on the device writing {exc.filename or 'a file'}; free space, then "
                       "rerun the same command (extract resumes; search/train/finetune take --resume)", err=True)
            ctx.exit(2)


@click.group(cls=BmnasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bmnas")
def cli() -> None:
    """BM-NAS multimodal fusion search on a cache of backbone features."""


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="bmnas")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
