"""A Hugging Face model as a backbone: ``--backbone MODALITY=hf:DIR`` for a local ``save_pretrained``
directory, read offline (``local_files_only``); transformers is the optional ``[hf]`` extra.

The adapter leans on the one convention every transformers model keeps: ``output_hidden_states=True``
exposes each layer, so taps are indices into ``hidden_states`` (0 = the embeddings; by default four
evenly spaced, the last included), named ``hidden_states.I`` in the store. Each hidden state passes
through an identity module of that name, so the tap hooks that read every other backbone read these.
- text: the directory's own tokenizer, padded to ``tokens`` (default 128) with the attention mask
  given to the model; a node is (D, tokens), the first token ([CLS]) in column 0;
- image: pixels resized and normalised by bmnas (transformers' image processors need torchvision)
  with the size, mean and std of the directory's ``preprocessor_config.json``; a node is the class
  token in column 0 followed by the patch grid reduced to ``--grid``² (the reduction's
  `image_tokens` kind);
- video (VideoMAE's layout): the tubelets' time steps after a max over space, capped by ``--t-max``.
A directory without ``preprocessor_config.json`` needs ``--input MODALITY=size=N,mean=..,std=..``.
For pretraining, a linear head reads the last hidden state averaged over tokens (text: real tokens).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from extract.backbones.inputs import InputSpec
from extract.backbones.module_backbone import OpenBackboneSpec
from extract.backbones.prepare import modality_base
from extract.backbones.registry import Setting, TapSpec
from extract.errors import BackboneError, DataError

PREFIX = "hf:"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
KINDS = {"text": "text", "image": "image_tokens", "video": "video", "depth": "video"}
DEFAULT_TOKENS = 128


def _transformers():
    try:
        import transformers
    except ImportError:
        raise BackboneError("hf: backbones need the transformers package (pip install 'bmnas[hf]')") from None
    transformers.utils.logging.disable_progress_bar()  # a bar per model load would drown extract's own
    return transformers


def _config(path: Path, spec: str) -> dict[str, Any]:
    if not path.is_dir():
        raise BackboneError(f"backbone {spec!r}: {path} is not a directory (give a save_pretrained directory)")
    if not (path / "config.json").is_file():
        raise BackboneError(f"backbone {spec!r}: {path} has no config.json; is it a save_pretrained directory?")
    if not any((path / w).is_file() for w in WEIGHT_FILES):
        raise BackboneError(f"backbone {spec!r}: {path} has no weights ({', '.join(WEIGHT_FILES[::2])})")
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BackboneError(f"backbone {spec!r}: {path / 'config.json'} is not readable JSON ({exc})") from None


def weights_file(path: Path) -> str:
    """The file whose sha256 the store records for this model's weights (for sharded weights the
    index, whose digest `extract.checkpoints.sha256_weights` extends over every shard it lists)."""
    return str(next(path / w for w in WEIGHT_FILES if (path / w).is_file()))


@lru_cache(maxsize=8)
def tokenizer(path: str) -> Any:
    try:
        return _transformers().AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise BackboneError(f"backbone 'hf:{path}': no tokenizer could be read there ({exc})") from None


def _image_input(path: Path, cfg: dict[str, Any], modality: str) -> InputSpec:
    """Size, mean and std from preprocessor_config.json (frames from the model's config for video);
    no file: size None, which `HFSpec.input_for` refuses unless --input gives it."""
    frames = int(cfg["num_frames"]) if modality_base(modality) in ("video", "depth") and "num_frames" in cfg else None
    proc_file = path / "preprocessor_config.json"
    if not proc_file.is_file():
        return InputSpec(frames=frames)
    try:
        proc = json.loads(proc_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BackboneError(f"{proc_file} is not readable JSON ({exc})") from None
    size = proc.get("crop_size") or proc.get("size") or cfg.get("image_size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    mean, std = proc.get("image_mean"), proc.get("image_std")
    if not proc.get("do_normalize", True):
        mean, std = None, None
    channels = int(cfg.get("num_channels", 3))
    return InputSpec(frames=frames, size=int(size) if size else None, channels=channels,
                     mean=tuple(mean) if mean else (0.0,) * channels, std=tuple(std) if std else (1.0,) * channels)


class HFBackbone(nn.Module):
    """A transformers model whose every hidden state passes an identity module ``hidden_states.I``."""

    def __init__(self, path: str, modality: str, num_classes: int = 2, **_: Any) -> None:
        super().__init__()
        try:
            self.model = _transformers().AutoModel.from_pretrained(path, local_files_only=True).float()
        except Exception as exc:  # noqa: BLE001 - corrupt weights, an unknown model type, remote code
            raise BackboneError(f"backbone 'hf:{path}': transformers cannot load it ({type(exc).__name__}: "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
        cfg = self.model.config
        self.base = modality_base(modality)
        self.hidden_states = nn.ModuleList([nn.Identity() for _ in range(cfg.num_hidden_layers + 1)])
        self.head = nn.Linear(cfg.hidden_size, num_classes)
        if self.base in ("video", "depth"):
            side = cfg.image_size // cfg.patch_size
            self._grid = (cfg.num_frames // cfg.tubelet_size, side, side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.base == "text":
            ids, mask = x[:, 0].long(), x[:, 1].long()
            out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        elif self.base in ("video", "depth"):  # bmnas prepares (B, C, T, H, W); VideoMAE reads (B, T, C, H, W)
            out = self.model(pixel_values=x.transpose(1, 2), output_hidden_states=True)
        else:
            out = self.model(pixel_values=x, output_hidden_states=True)
        for tap, h in zip(self.hidden_states, out.hidden_states):
            tap(self._as_tap(h))
        last = out.hidden_states[-1]
        if mask is None:
            return self.head(last.mean(1))
        m = mask.unsqueeze(-1).to(last.dtype)
        return self.head((last * m).sum(1) / m.sum(1).clamp(min=1))

    def _as_tap(self, h: torch.Tensor) -> torch.Tensor:
        """Video tokens (B, t*h*w, D) as a (B, D, t, h, w) map, so the video reduction applies."""
        if self.base not in ("video", "depth"):
            return h
        t, s1, s2 = self._grid
        b, n, d = h.shape
        if n != t * s1 * s2:
            raise BackboneError(f"video model gave {n} tokens, not {t} x {s1} x {s2} tubelets")
        return h.reshape(b, t, s1, s2, d).permute(0, 4, 1, 2, 3)


def default_taps(layers: int) -> tuple[int, ...]:
    """Four evenly spaced hidden states, the last included (fewer when the model is shallower)."""
    return tuple(dict.fromkeys(max(1, int(layers * (k + 1) / 4 + 0.5)) for k in range(4)))


class HFSpec(OpenBackboneSpec):
    """`hf:DIR` on one modality: taps by hidden-state index, input from the directory."""

    def tap_specs(self, setting: str = "full", names: list[str] | None = None) -> list[TapSpec]:
        return super().tap_specs(setting, [self.tap_name(n) for n in names] if names else None)

    def tap_name(self, name: str) -> str:
        """``2`` or ``hidden_states.2`` -> ``hidden_states.2``, with an error for anything else."""
        index = name[len("hidden_states."):] if name.startswith("hidden_states.") else name
        count = len(self.taps)
        if not index.isdigit() or not 0 <= int(index) < count:
            raise BackboneError(f"backbone {self.name!r}: tap {name!r} is not a hidden-state index; "
                                f"this model has hidden_states 0..{count - 1} (0 = the embeddings)")
        return f"hidden_states.{int(index)}"

    def input_for(self, setting: str, overrides: dict[str, Any] | None = None) -> InputSpec:
        inp = super().input_for(setting, overrides)
        mod = self.modalities[0]
        if modality_base(mod) != "text" and inp.size is None:
            raise BackboneError(f"backbone {self.name!r}: the directory has no preprocessor_config.json; give "
                                f"--input {mod}=size=N,mean=M1:M2:M3,std=S1:S2:S3 instead")
        return inp

    def __reduce__(self):  # pickled as the spec that makes it (DataLoader workers started by spawn)
        return hf_backbone, (self.name, self.modalities[0])


def _prepare_text(path: str):
    def prepare(item: Any, inp: InputSpec) -> torch.Tensor:
        """Raw text -> (2, tokens) int64: token ids and attention mask."""
        if not isinstance(item, str):
            raise DataError(f"backbone 'hf:{path}' reads raw text; this source gives feature arrays "
                            "(use maxout_mlp for text features)")
        enc = tokenizer(path)(item, padding="max_length", truncation=True, max_length=inp.tokens or DEFAULT_TOKENS,
                              return_tensors="pt")
        return torch.stack([enc["input_ids"][0], enc["attention_mask"][0]])
    return prepare


def hf_backbone(text: str, modality: str) -> HFSpec:
    """The declaration of ``hf:DIR`` on ``modality``: every hidden state a tap, four of them by default."""
    path = Path(text[len(PREFIX):]).expanduser().resolve()
    name = PREFIX + str(path)
    base = modality_base(modality)
    if base not in KINDS:
        raise BackboneError(f"backbone {name!r}: hf: models read text, image or video, not {modality!r}")
    cfg = _config(path, name)
    layers = cfg.get("num_hidden_layers")
    if not isinstance(layers, int):
        raise BackboneError(f"backbone {name!r}: its config.json gives no num_hidden_layers")
    if base == "text":
        tokenizer(str(path))
        inp, prepare = InputSpec(tokens=DEFAULT_TOKENS), _prepare_text(str(path))
    else:
        inp, prepare = _image_input(path, cfg, modality), None
    kind = KINDS[base]
    taps = tuple((f"hidden_states.{i}", f"hidden_states.{i}", kind) for i in range(layers + 1))
    setting = Setting({"path": str(path), "modality": modality}, inp, (None,) * len(taps))
    return HFSpec(name=name, modalities=(modality,), factory=HFBackbone, taps=taps, head="head",
                  settings={"full": setting}, prepare=prepare, weights=lambda: weights_file(path),
                  default_taps=tuple(f"hidden_states.{i}" for i in default_taps(layers)),
                  description=f"Hugging Face model {path} ({cfg.get('model_type', '?')}, {layers} layers)")
