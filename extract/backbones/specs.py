"""One backbone spec everywhere (extract, pretrain, finetune, `bmnas backbones show`):

- a registry name (``hcn``): a built-in declaration, or one an installed package registers under the
  entry-point group ``bmnas.backbones`` (the entry point resolves to a `BackboneSpec`, declared as a
  built-in is);
- ``hf:PATH``: a local Hugging Face ``save_pretrained`` directory (`extract.backbones.hf`);
- ``package.module:callable``, any other value with a colon: a user's torch module
  (`extract.backbones.module_backbone`; ``--taps`` required).

Resolution is cached per process, so a dask worker resolves a spec once; a spec names the same
declaration in every process (an ``hf:`` path is made absolute).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from importlib.metadata import entry_points

from extract.backbones.hf import PREFIX as HF_PREFIX
from extract.backbones.hf import hf_backbone
from extract.backbones.module_backbone import module_backbone
from extract.backbones.registry import BackboneSpec, get_backbone, list_backbones
from extract.errors import BackboneError

ENTRY_POINT_GROUP = "bmnas.backbones"


@lru_cache(maxsize=1)
def _plugins() -> tuple[dict[str, BackboneSpec], dict[str, str]]:
    """Every entry point of ``bmnas.backbones``: the declarations that load, and why the others do not
    (a broken plugin hides no other and fails only where it is named)."""
    good: dict[str, BackboneSpec] = {}
    broken: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure of a plugin
            broken[ep.name] = f"backbone plugin {ep.name!r} ({ep.value}) does not load: {type(exc).__name__}: {exc}"
            continue
        if not isinstance(spec, BackboneSpec):
            broken[ep.name] = f"backbone plugin {ep.name!r} ({ep.value}) gives {type(spec).__name__}, not a BackboneSpec"
        elif spec.name != ep.name or ep.name in list_backbones():
            broken[ep.name] = (f"backbone plugin {ep.value}: entry point {ep.name!r} must be its declaration's "
                               f"name ({spec.name!r}) and no built-in backbone's")
        else:
            good[ep.name] = spec
    return good, broken


def plugin_backbones() -> dict[str, BackboneSpec]:
    """Name -> declaration of every backbone installed packages register under ``bmnas.backbones``."""
    return _plugins()[0]


def all_backbone_names() -> list[str]:
    """Built-in and plugin names, for listings and errors."""
    return sorted(set(list_backbones()) | set(plugin_backbones()))


@lru_cache(maxsize=64)
def _resolve(text: str, modality: str, taps: tuple[str, ...] | None) -> BackboneSpec:
    if text.startswith(HF_PREFIX):
        return hf_backbone(text, modality)
    if ":" in text:
        return module_backbone(text, modality, taps)
    if text in list_backbones():
        return get_backbone(text)
    if text in plugin_backbones():
        return plugin_backbones()[text]
    if text in _plugins()[1]:
        raise BackboneError(_plugins()[1][text])
    raise BackboneError(f"unknown backbone {text!r}; known backbones: {', '.join(all_backbone_names())} "
                        "(or hf:DIR, or package.module:callable)")


def resolve_backbone(text: str, modality: str, taps: tuple[str, ...] | list[str] | None = None) -> BackboneSpec:
    """The declaration a spec names on one modality (``taps``: the run's ``--taps``, which a torch
    module's declaration is made of); checks that it reads that modality."""
    text = text.strip()
    if text.startswith(HF_PREFIX):  # one cache entry per directory, whatever the working directory
        text = HF_PREFIX + str(Path(text[len(HF_PREFIX):]).expanduser().resolve())
    spec = _resolve(text, modality, tuple(taps) if taps else None)
    spec.check_modality(modality)
    return spec
