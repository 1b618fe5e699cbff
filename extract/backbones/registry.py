"""The backbone registry: one declaration per backbone, naming its taps (cf. timm's feature_info).

A declaration says which modalities the backbone reads, what input it expects per setting
(``full`` is the paper's architecture, ``tiny`` a narrow one for tests and the CPU demo), its
taps in shallow-to-deep order (tap name -> module path, kind, channels per setting) and its
classifier head, so pretraining, checkpoint checks and extraction all read the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.nn.modules.lazy import LazyModuleMixin

from extract.backbones.inputs import InputSpec
from extract.backbones.prepare import prepare_one
from extract.errors import BackboneError
from extract.reduction import TAP_KINDS  # noqa: F401  (re-exported)



@dataclass(frozen=True)
class Setting:
    """One width/depth setting: factory kwargs, the input it wants, each tap's channels."""

    config: dict[str, Any]
    input: InputSpec
    channels: tuple[int | None, ...]  # per tap of the declaration, in its order (None: probed)
    modules: dict[str, str] = field(default_factory=dict)  # tap name -> module path, where it differs


@dataclass(frozen=True)
class TapSpec:
    """A named tap resolved for one setting: where to hook and what comes out."""

    name: str
    module: str
    kind: str
    channels: int | None  # None until a probe forward measures it (a user's module, a Hugging Face model)


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry. ``taps`` is ``((name, module path, kind), ...)`` shallow to deep: every layer
    a user may name with ``--taps``; ``default_taps`` the ones extracted when none are named (all of
    them when empty). A setting may place a tap elsewhere (``Setting.modules``: tap name -> module)."""

    name: str
    modalities: tuple[str, ...]
    factory: Callable[..., nn.Module]
    taps: tuple[tuple[str, str, str], ...]
    head: str
    settings: dict[str, Setting]
    description: str = ""
    in_channels: dict[str, int] = field(default_factory=dict)  # per modality override (depth: 1)
    prepare: Callable[[Any, InputSpec], Any] | None = None  # own input preparation (tokenizers)
    weights: Callable[[], str] | None = None  # file of weights the factory loads itself (shipped)
    default_taps: tuple[str, ...] = ()

    def input_for(self, setting: str, overrides: dict[str, Any] | None = None) -> InputSpec:
        """The input a run prepares: the setting's, with the run's ``--input`` fields replaced."""
        return self.setting(setting).input.with_overrides(overrides)

    def prepare_input(self, item: Any, modality: str, inp: InputSpec) -> Any:
        """One sample's raw array (or text) as this backbone's input tensor, without batch axis."""
        return self.prepare(item, inp) if self.prepare else prepare_one(item, modality, inp)

    def setting(self, setting: str) -> Setting:
        if setting not in self.settings:
            raise BackboneError(
                f"backbone {self.name!r} has no setting {setting!r}; choose one of "
                f"{', '.join(sorted(self.settings))}"
            )
        return self.settings[setting]

    def tap_specs(self, setting: str = "full", names: list[str] | None = None) -> list[TapSpec]:
        """The taps of a setting, the named ones or the defaults, always shallow to deep."""
        st = self.setting(setting)
        all_taps = [TapSpec(n, st.modules.get(n, m), k, c) for (n, m, k), c in zip(self.taps, st.channels)]
        if not names:
            names = list(self.default_taps)
            if not names:
                return all_taps
        known = {t.name for t in all_taps}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BackboneError(
                f"backbone {self.name!r} has no tap {', '.join(map(repr, unknown))}; "
                f"its taps are {', '.join(t.name for t in all_taps)}"
            )
        return [t for t in all_taps if t.name in names]

    def check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise BackboneError(
                f"backbone {self.name!r} reads {'/'.join(self.modalities)}, not {modality!r}"
            )

    def build(
        self,
        setting: str = "full",
        num_classes: int = 2,
        modality: str | None = None,
        input_dim: int | None = None,
        seed: int | None = None,
        example: torch.Tensor | None = None,
    ) -> nn.Module:
        """A fresh model with random weights; ``input_dim`` sets text width when data decides it.

        With ``seed`` the random weights are the same in every process (extraction without a
        checkpoint must give every dask worker the same network), and the global RNG is untouched.
        ``example`` (one prepared input, no batch axis) sizes lazy layers (a module backbone's head,
        a user's ``LazyConv``) by one forward, inside the same seeded RNG; an input the model cannot
        run is a BackboneError naming the spec and the shape.
        """
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.build(setting, num_classes, modality, input_dim, example=example)
        st = self.setting(setting)
        modality = modality or self.modalities[0]
        self.check_modality(modality)
        kwargs = dict(st.config)
        kwargs["num_classes"] = int(num_classes)
        if st.input.channels is not None:
            kwargs["in_channels"] = self.in_channels.get(modality, st.input.channels)
        if st.input.dim is not None:
            kwargs["in_dim"] = int(input_dim or st.input.dim)
        model = self.factory(**kwargs)
        if example is not None and any(isinstance(m, LazyModuleMixin) for m in model.modules()):
            self.run_example(model, example, modality)
        return model

    def run_example(self, model: nn.Module, example: torch.Tensor, modality: str) -> None:
        """One forward of one prepared input in eval mode; a failure is one line naming the spec."""
        was = model.training
        try:
            with torch.no_grad():
                model.eval()(example[None])
        except BackboneError:
            raise
        except Exception as exc:  # noqa: BLE001 - a user's module that cannot run this input
            raise self.input_failure(exc, example, modality) from None
        finally:
            model.train(was)

    def input_failure(self, exc: BaseException, example: torch.Tensor, modality: str) -> BackboneError:
        """The one line for a model that cannot run a prepared input: the spec, the shape, the option."""
        return BackboneError(f"backbone {self.name!r} failed on one prepared {modality} input of shape "
                             f"{tuple(example.shape)} ({type(exc).__name__}: {exc}); adjust --input {modality}=...")


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a declaration; names are unique."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_backbone(name: str) -> BackboneSpec:
    """The declaration of a backbone by name, or a BackboneError listing the known ones."""
    if name not in _REGISTRY:
        raise BackboneError(
            f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}"
        )
    return _REGISTRY[name]


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path, with an error naming the path when it is absent."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise BackboneError(f"model has no module {path!r} to tap") from exc
