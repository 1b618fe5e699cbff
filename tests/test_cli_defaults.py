"""The command line takes its defaults from the stage configs (one place for every default): an
option named as a config field defaults to that field's default."""

from __future__ import annotations

import dataclasses

import pytest

from extract.config import ExtractConfig
from pipeline.cli import cli
from pipeline.configs import FinetuneConfig, PretrainConfig, TrainConfig



def _default(param):
    """The option's default as a run sees it (a flag without one is off; None: the option has none)."""
    value = param.default
    if value is None or type(value).__name__ == "Sentinel":
        return False if getattr(param, "is_flag", False) else None
    return value


def _defaults(cls) -> dict:
    out = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    if cls is ExtractConfig:
        out.update(dataclasses.asdict(ExtractConfig().reduction))
    return out


@pytest.mark.parametrize("command,cls", [("extract", ExtractConfig), ("train", TrainConfig),
                                         ("finetune", FinetuneConfig), ("ablate", TrainConfig),
                                         ("pretrain", PretrainConfig)])
def test_option_defaults_are_the_config_defaults(command, cls):
    fields = _defaults(cls)
    checked = []
    for param in cli.get_command(None, command).params:
        if param.name in fields and _default(param) is not None:
            assert _default(param) == fields[param.name], f"{command} --{param.name}: {_default(param)!r}"
            checked.append(param.name)
    assert len(checked) >= 3, checked  # the comparison reached the options


def test_negated_flags_match_the_config():
    params = {p.name: p for p in cli.get_command(None, "extract").params}
    assert _default(params["no_dask"]) is (not ExtractConfig.use_dask)
    assert _default(params["quiet"]) is (not ExtractConfig.progress)
