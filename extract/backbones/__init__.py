"""Backbones with named taps: the registry, one module per architecture, and the adapters that make a
user's torch module or a Hugging Face directory a backbone (`specs.resolve_backbone`).

Use: ``spec = resolve_backbone("hcn", "skeleton")``; ``model = spec.build("tiny", num_classes=60)``;
``spec.tap_specs("tiny")`` lists the default taps shallow to deep.
"""

from extract.backbones.registry import (
    TAP_KINDS, BackboneSpec, InputSpec, Setting, TapSpec, get_backbone, get_module, list_backbones, register,
)
from extract.backbones import resnet3d, hcn, vgg, maxout  # noqa: F401  (registration)
from extract.backbones.prepare import prepare_batch, prepare_one
from extract.backbones.specs import ENTRY_POINT_GROUP, all_backbone_names, resolve_backbone

__all__ = [
    "TAP_KINDS", "BackboneSpec", "InputSpec", "Setting", "TapSpec", "get_backbone", "get_module",
    "list_backbones", "register", "prepare_batch", "prepare_one", "ENTRY_POINT_GROUP", "all_backbone_names",
    "resolve_backbone",
]
