"""The one resume rule of the CLI (search, train, finetune, pretrain): `--resume RUN` continues a run
with its own config.yaml, and only `--device` may accompany it."""

from __future__ import annotations

import click
from click.core import ParameterSource

from fusion_search.errors import SearchError


def check_resume_options(resume: str) -> None:
    """Refuse every option given with --resume but --device: it would be silently ignored otherwise."""
    ctx = click.get_current_context()
    extra = [p.opts[0] for p in ctx.command.params if p.name not in ("resume", "device") and p.opts
             and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    if extra:
        raise SearchError(f"--resume {resume} continues with the run's own config.yaml (only --device may "
                          f"change); drop {', '.join(extra)}")


def given_device() -> str | None:
    """--device when given on the command line (a resumed run may move), else None: the run's own."""
    ctx = click.get_current_context()
    return ctx.params["device"] if ctx.get_parameter_source("device") == ParameterSource.COMMANDLINE else None
