"""A user's own torch network as a backbone: ``--backbone MODALITY=package.module:callable``.

The callable (importable from ``PYTHONPATH``) returns an ``nn.Module``; ``--taps MODALITY=a,b`` name
modules of its ``named_modules()`` and are required, since nothing else says which layers matter.
Channels are measured by a probe forward of one prepared input, never asked of the user. The input
is the modality's default preparation (`DEFAULT_INPUTS`), overridable with ``--input``.

For pretraining, a linear head reads the deepest tap, reduced as the cache reduces it and averaged
over time. The head sits beside the user's module (``bmnas_head``, a lazy linear layer
sized at the first forward, `ModuleWithHead`), and the module's own state_dict keys stay as they are:
a file the user saved from their network loads with ``--checkpoint`` unchanged.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from extract.backbones.inputs import InputSpec
from extract.backbones.prepare import modality_base
from extract.backbones.registry import BackboneSpec, Setting
from extract.errors import BackboneError
from extract.reduction import reduce_tap

HEAD = "bmnas_head"

# what a module backbone reads per kind of modality when the run names no --input fields
DEFAULT_INPUTS = {
    "video": InputSpec(frames=8, size=112, channels=3),
    "depth": InputSpec(frames=8, size=112, channels=1),
    "image": InputSpec(size=224, channels=3),
    "skeleton": InputSpec(frames=32),
    "text": InputSpec(),
    "array": InputSpec(),
}
TAP_KIND = {"video": "video", "depth": "video", "image": "image", "skeleton": "skeleton", "text": "text",
            "array": "series"}


def tap_kind(modality: str) -> str:
    """How a tap of this modality is reduced for the cache (a user's own modality: as a series)."""
    return TAP_KIND.get(modality_base(modality), "series")


def load_callable(text: str) -> Callable[[], Any]:
    """``package.module:callable`` imported, with an error naming the spec."""
    mod_name, _, attr = text.partition(":")
    if not mod_name or not attr:
        raise BackboneError(f"backbone {text!r}: write a torch module as package.module:callable")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise BackboneError(f"backbone {text!r}: cannot import {mod_name!r} ({exc}); is it on PYTHONPATH?") from None
    except Exception as exc:  # noqa: BLE001 - a module that fails while importing (a SyntaxError, ...)
        raise BackboneError(f"backbone {text!r}: importing {mod_name!r} failed ({type(exc).__name__}: "
                            f"{exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BackboneError(f"backbone {text!r}: module {mod_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BackboneError(f"backbone {text!r}: {attr!r} is not callable")
    return obj


class ModuleWithHead(nn.Module):
    """A user's module plus a lazy linear head on its deepest tap; forward returns the head's logits.

    The user's children, parameters and buffers (and which buffers are not persistent) are
    registered here under their own names (the registries are shared, not copied), so ``state_dict``
    keys are the module's own plus ``bmnas_head.*`` and a file saved from the bare module loads
    unchanged. The module itself is kept outside the registry, under a name no child can take: its
    forward runs as written (an ``nn.Sequential`` never sees the head as a layer). The root module's
    own ``train()`` override and state-dict hooks are not called (its children's are).
    """

    def __init__(self, net: nn.Module, deepest: str, kind: str, num_classes: int) -> None:
        super().__init__()
        if HEAD in net._modules:
            raise BackboneError(f"the module has a child named {HEAD!r}, the name bmnas gives its head; rename it")
        object.__setattr__(self, "_bmnas_net", net)
        object.__setattr__(self, "_bmnas_kind", kind)
        object.__setattr__(self, "_bmnas_seen", {})
        self._parameters = net._parameters
        self._buffers = net._buffers
        self._non_persistent_buffers_set = net._non_persistent_buffers_set
        self._modules.update(net._modules)
        self.add_module(HEAD, nn.LazyLinear(num_classes))
        net.get_submodule(deepest).register_forward_hook(self._keep)

    def _keep(self, _mod, _inp, out) -> None:
        self._bmnas_seen["x"] = out[0] if isinstance(out, (tuple, list)) else out

    def train(self, mode: bool = True) -> "ModuleWithHead":
        super().train(mode)
        self._bmnas_net.training = mode  # the root's own flag (children are shared and already set)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._bmnas_net(x)
        deepest = self._bmnas_seen.pop("x")
        return getattr(self, HEAD)(reduce_tap(deepest, self._bmnas_kind).float().mean(-1))


def module_backbone(text: str, modality: str, taps: Sequence[str] | None) -> BackboneSpec:
    """The declaration of a user's module on one modality with the taps the run names."""
    if not taps:
        raise BackboneError(f"backbone {text!r} is a torch module: name its layers (modules of its "
                            f"named_modules()) with --taps {modality}=LAYER,LAYER in extract and finetune, "
                            "--taps LAYER,LAYER in pretrain and backbones show")
    build = load_callable(text)
    kind = tap_kind(modality)
    names = tuple(taps)

    def factory(num_classes: int = 2, **_: Any) -> nn.Module:
        try:
            net = build()
        except Exception as exc:  # noqa: BLE001 - the user's callable (it takes no arguments)
            raise BackboneError(f"backbone {text!r}: calling it failed ({type(exc).__name__}: {exc}); the "
                                "callable must take no arguments and return an nn.Module") from None
        if not isinstance(net, nn.Module):
            raise BackboneError(f"backbone {text!r} returned {type(net).__name__}, not a torch nn.Module")
        known = [n for n, _ in net.named_modules() if n]
        missing = [t for t in names if t not in known]
        if missing:
            few = ", ".join(known[:12]) + (" ..." if len(known) > 12 else "")
            raise BackboneError(f"backbone {text!r} has no module {missing[0]!r} to tap; its modules: {few}")
        order = {n: i for i, n in enumerate(known)}  # registration order stands for depth
        return ModuleWithHead(net, max(names, key=order.__getitem__), kind, num_classes)

    base = DEFAULT_INPUTS.get(modality_base(modality), InputSpec())
    setting = Setting({}, base, (None,) * len(names))
    return ModuleSpec(name=text, modalities=(modality,), factory=factory,
                      taps=tuple((n, n, kind) for n in names), head=HEAD,
                      settings={"full": setting}, description=f"torch module {text}")


class OpenBackboneSpec(BackboneSpec):
    """A declaration made at run time (a user's module, a Hugging Face directory): one setting, which
    every ``--setting`` name selects, since the weights, not bmnas, decide the architecture."""

    def setting(self, setting: str) -> Setting:
        return next(iter(self.settings.values()))


class ModuleSpec(OpenBackboneSpec):
    """A user's module on one modality; pickled as the spec that makes it (a DataLoader worker started
    by spawn re-imports the module instead of pickling a closure)."""

    def __reduce__(self):
        return module_backbone, (self.name, self.modalities[0], tuple(n for n, _, _ in self.taps))
