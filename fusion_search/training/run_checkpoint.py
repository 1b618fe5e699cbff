"""Writing and reading the checkpoints a run directory holds (last.pt, best.pt), for search, train,
finetune and evaluate alike.

Why one writer: it goes through a temporary file (a kill never leaves half a checkpoint) and writes
bytes with plain file IO, so a full disk is the OSError ENOSPC the CLI reports in one line (torch.save
straight to a full disk fails with an opaque RuntimeError). Why one reader: a checkpoint cut short or
holding pickled objects (refused by ``weights_only``) must stop a resume, an evaluation or
``--init-from`` with one line naming the file, not with torch's traceback.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from fusion_search.errors import SearchError
from stores.files import replace_atomic


def load_run_checkpoint(path: str | os.PathLike, keys: Sequence[str] = ("model",)) -> dict[str, Any]:
    """The dict saved at ``path`` (tensors and plain values only), holding at least ``keys``.

    Loaded on the CPU whatever device the run used: RNG states must stay there (torch.set_rng_state
    takes CPU byte tensors), and load_state_dict copies weights to the model's device."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SearchError(f"{path} does not exist; is this the run directory you meant?") from None
    except Exception as exc:  # noqa: BLE001 - truncation and refused pickles raise many types
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise SearchError(f"{path} is not a readable bmnas checkpoint ({type(exc).__name__}: {reason}); it is "
                          "truncated or holds pickled objects: restore it from a copy or start the run again") from None
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise SearchError(f"{path} lacks {', '.join(missing)}: not a checkpoint of this kind of run")
    return ckpt


def save_run_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` through the one atomic writer (a unique temporary file beside it,
    so a kill mid-write leaves the previous checkpoint readable)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    replace_atomic(path, lambda tmp: tmp.write_bytes(buf.getbuffer()))
