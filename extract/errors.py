"""Errors of the extract room. Each message names the file (and line) or option and the fix."""


class ExtractError(Exception):
    """Base of user-caused errors in data sources, backbones, checkpoints and extraction."""


class DataError(ExtractError):
    """A raw data file or dataset layout is missing, corrupt or inconsistent."""


class BackboneError(ExtractError):
    """Unknown backbone or tap, or a checkpoint that does not fit the architecture."""
