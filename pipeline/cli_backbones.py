"""Backbone specs on the command line: the one option syntax extract, pretrain and finetune share, and
`bmnas backbones` (the listing) with `bmnas backbones show SPEC` (a spec's taps, probed).

``--backbone MODALITY=SPEC`` (a registry name, ``hf:DIR`` or ``package.module:callable``),
``--checkpoint MODALITY=PATH``, ``--taps MODALITY=A,B`` and ``--input MODALITY=KEY=VALUE[,KEY=VALUE]``
(fields of the prepared input: frames, size, channels, tokens, mean=A:B:C, std=A:B:C, ...).
"""

from __future__ import annotations

from typing import Any

import click
import numpy as np

from extract.errors import BackboneError, ExtractError

LIST_FIELDS = ("mean", "std")


def pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``("video=a", "skeleton=b")`` -> {"video": "a", ...}, with an error naming the option."""
    out: dict[str, str] = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key or not val:
            raise ExtractError(f"{option} {v!r}: expected MODALITY=VALUE (e.g. video=inflated_resnet50)")
        out[key.strip()] = val.strip()
    return out


def input_fields(text: str, option: str = "--input") -> dict[str, Any]:
    """``size=64,mean=0.5:0.5:0.5`` -> {"size": "64", "mean": ["0.5", ...]} (checked by InputSpec)."""
    out: dict[str, Any] = {}
    for part in (p for p in text.split(",") if p.strip()):
        key, sep, val = part.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ExtractError(f"{option} {text!r}: expected KEY=VALUE[,KEY=VALUE] (e.g. size=112,frames=16)")
        key = key.strip()
        out[key] = val.strip().split(":") if key in LIST_FIELDS else val.strip()
    return out


def tap_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def backbone_options(backbone_opts: tuple[str, ...], checkpoint_opts: tuple[str, ...], tap_opts: tuple[str, ...],
                     input_opts: tuple[str, ...], *, require_backbone: bool = True) -> dict[str, dict[str, Any]]:
    """modality -> {backbone, checkpoint, taps, input} from the shared options; every option that
    names a modality must name one with a --backbone (unless `require_backbone` is off: finetune's
    overrides of a store's record)."""
    bbs = pairs(backbone_opts, "--backbone")
    parts = {"checkpoint": pairs(checkpoint_opts, "--checkpoint"), "taps": pairs(tap_opts, "--taps"),
             "input": pairs(input_opts, "--input")}
    mods = list(bbs)
    for option, d in parts.items():
        extra = [m for m in d if m not in bbs]
        if extra and require_backbone:
            raise ExtractError(f"--{option} names modality {extra[0]!r} that has no --backbone")
        mods += [m for m in extra if m not in mods]
    out: dict[str, dict[str, Any]] = {}
    for m in mods:
        out[m] = {"modality": m, "backbone": bbs.get(m), "checkpoint": parts["checkpoint"].get(m),
                  "taps": tap_list(parts["taps"][m]) if m in parts["taps"] else None,
                  "input": input_fields(parts["input"][m], f"--input {m}=") if m in parts["input"] else None}
    return out


def _example(modality: str, inp: Any) -> Any:
    """A seeded random raw sample of a modality, shaped as a source would hand it over."""
    from extract.backbones.prepare import modality_base

    rng = np.random.default_rng(0)
    base = modality_base(modality)
    if base in ("video", "depth"):
        c = 1 if base == "depth" else 3
        return rng.integers(0, 256, (inp.frames or 8, inp.size or 112, inp.size or 112, c), dtype=np.uint8)
    if base == "image":
        return rng.integers(0, 256, (inp.size or 224, inp.size or 224, 3), dtype=np.uint8)
    if base == "skeleton":
        return rng.standard_normal((3, inp.frames or 32, inp.joints or 25, inp.bodies or 2)).astype(np.float32)
    if base == "text":
        return "a short plot about a detective in a rainy city" if inp.dim is None and inp.tokens else \
            rng.standard_normal(inp.dim or 300).astype(np.float32)
    raise BackboneError(f"no example input for modality {modality!r}: give --data with a source that has it")


@click.group("backbones", invoke_without_command=True)
@click.option("--setting", default="full", show_default=True, help="Setting whose tap channels to show.")
@click.pass_context
def backbones_cmd(ctx: click.Context, setting: str) -> None:
    """List the registered backbones (built-in and installed plugins) and their taps, shallow to deep;
    the default taps carry a *."""
    if ctx.invoked_subcommand is not None:
        return
    from extract.backbones import all_backbone_names, resolve_backbone

    for name in all_backbone_names():
        spec = resolve_backbone(name, next(iter(_modalities(name))))
        if setting in spec.settings:
            defaults = {t.name for t in spec.tap_specs(setting)}
            taps = ", ".join(f"{t.name}{'*' if t.name in defaults else ''}[{t.kind} C={t.channels}]"
                             for t in spec.tap_specs(setting, [n for n, _, _ in spec.taps]))
        else:
            taps = "(no such setting)"
        click.echo(f"{name:<18} {'/'.join(spec.modalities):<14} {taps}")
    click.echo("also: hf:DIR (a Hugging Face save_pretrained directory) and package.module:callable (a torch "
               "module; --taps required); `bmnas backbones show SPEC --modality M` probes one")


def _modalities(name: str) -> tuple[str, ...]:
    from extract.backbones import get_backbone
    from extract.backbones.specs import plugin_backbones

    spec = plugin_backbones().get(name) or get_backbone(name)
    return spec.modalities


@backbones_cmd.command("show")
@click.argument("spec_text", metavar="SPEC")
@click.option("--modality", default=None, help="Modality to read (default: the backbone's first).")
@click.option("--taps", "taps_text", default=None, metavar="A,B", help="Taps to show (default: the default taps).")
@click.option("--input", "input_text", default=None, metavar="KEY=VALUE,...", help="Fields of the prepared input.")
@click.option("--setting", default="full", show_default=True)
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Read the example from this dataset's first sample (kind detected) instead of a random one.")
def show_cmd(spec_text: str, modality: str | None, taps_text: str | None, input_text: str | None,
             setting: str, data: str | None) -> None:
    """Print SPEC's taps with the node shape (C, T) each gives for one prepared example input."""
    import torch

    from extract.backbones import resolve_backbone
    from extract.backbones.taps import TapReader
    from extract.reduction import ReductionConfig

    if modality is None:
        if ":" in spec_text:
            raise ExtractError(f"--modality: required for {spec_text!r} (hf: and module backbones read any)")
        modality = _modalities(spec_text)[0]
    taps = tap_list(taps_text) if taps_text else None
    spec = resolve_backbone(spec_text, modality, taps)
    inp = spec.input_for(setting, input_fields(input_text) if input_text else None)
    if data:
        from extract.sources.registry import open_source

        src = open_source(data)
        first = src.samples()[0].id
        raw = src.read(first, modality)
    else:
        raw = _example(modality, inp)
    x = spec.prepare_input(raw, modality, inp)
    tap_specs = spec.tap_specs(setting, list(taps) if taps else None)
    model = spec.build(setting, 2, modality, int(x.shape[-1]) if modality == "text" and x.dim() == 1 else None,
                       seed=0, example=x).eval()
    reader = TapReader(model, tap_specs, ReductionConfig())
    try:
        with torch.inference_mode():
            out = reader.run(x[None])
    finally:
        reader.close()
    click.echo(f"{spec.name} on {modality} ({setting}); prepared input {tuple(x.shape)} "
               f"[{', '.join(f'{k}={v}' for k, v in inp.as_dict().items())}]")
    for k, t in enumerate(tap_specs, 1):
        c, length = out[t.name].shape[1:]
        click.echo(f"  {modality}_{k:<3} {t.name:<22} {t.kind:<13} C={c:<6} T={length}")
