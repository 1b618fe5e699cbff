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
from importlib.metadata import entry_points

from extract.backbones.hf import PREFIX as HF_PREFIX
from extract.backbones.hf import hf_backbone
from extract.backbones.module_backbone import module_backbone
from extract.backbones.registry import BackboneSpec, get_backbone, list_backbones
from extract.errors import BackboneError

ENTRY_POINT_GROUP = "bmnas.backbones"


@lru_cache(maxsize=1)
def plugin_backbones() -> dict[str, BackboneSpec]:
    """Name -> declaration of every backbone installed packages register under ``bmnas.backbones``."""
    out: dict[str, BackboneSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
            raise BackboneError(f"backbone plugin {ep.name!r} ({ep.value}) does not load: {exc}") from None
        if not isinstance(spec, BackboneSpec):
            raise BackboneError(f"backbone plugin {ep.name!r} ({ep.value}) gives {type(spec).__name__}, "
                                "not a BackboneSpec")
        if spec.name != ep.name or ep.name in list_backbones():
            raise BackboneError(f"backbone plugin {ep.value}: entry point {ep.name!r} must name its declaration "
                                f"({spec.name!r}) and no built-in backbone")
        out[ep.name] = spec
    return out


def all_backbone_names() -> list[str]:
    """Built-in and plugin names, for listings and errors."""
    return sorted(set(list_backbones()) | set(plugin_backbones()))


def is_open_spec(text: str) -> bool:
    """True for a spec declared at run time (hf: or a module), whose taps the run names."""
    return text.startswith(HF_PREFIX) or ":" in text


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
    raise BackboneError(f"unknown backbone {text!r}; known backbones: {', '.join(all_backbone_names())} "
                        "(or hf:DIR, or package.module:callable)")


def resolve_backbone(text: str, modality: str, taps: tuple[str, ...] | list[str] | None = None) -> BackboneSpec:
    """The declaration a spec names on one modality (``taps``: the run's ``--taps``, which a torch
    module's declaration is made of); checks that it reads that modality."""
    text = text.strip()
    spec = _resolve(text, modality, tuple(taps) if taps else None)
    spec.check_modality(modality)
    return spec
