"""Video and image reading shared by every source: decord decoding, uniform frame sampling,
short-side resize and centre crop.

Kept in one module so NTU, EgoGesture and manifest sources sample frames the same way, and so a
corrupt or truncated file always becomes a ``DataError`` that names the file.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from extract.errors import DataError


def uniform_indices(length: int, count: int) -> np.ndarray:
    """``count`` frame indices spread evenly over ``length`` frames (repeats when too short).

    Uses segment centres, as TSN-style samplers do, so the first and last frames are not
    over-represented.
    """
    if length <= 0:
        raise ValueError("cannot sample frames from an empty sequence")
    idx = np.floor((np.arange(count) + 0.5) * length / count).astype(np.int64)
    return np.clip(idx, 0, length - 1)


def resize_crop(frames: np.ndarray, size: int | tuple[int, int] | None) -> np.ndarray:
    """Resize ``(T, H, W, C)`` uint8 frames so the short side fits, then centre-crop.

    ``size`` is an int (square output) or ``(height, width)``; ``None`` keeps the frames as they are.
    The resize runs on the uint8 frames in channels-last layout, torch's vectorised path: at NTU's
    1920x1080 -> 112 it takes 13 ms for 8 frames where a float32 copy takes 470 ms, and the two differ
    by at most one grey level (rounding).
    """
    if frames.dtype != np.uint8:
        raise TypeError(f"resize_crop takes uint8 frames, got {frames.dtype}")
    if size is None:
        return frames
    out_h, out_w = (size, size) if isinstance(size, int) else size
    t, h, w, c = frames.shape
    if (h, w) == (out_h, out_w):
        return frames
    import torch  # lazy: listing and synthetic generation should not pay torch's import
    import torch.nn.functional as F

    scale = max(out_h / h, out_w / w)
    new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    if not frames.flags.writeable:  # torch.from_numpy warns on read-only arrays (PIL's are)
        frames = frames.copy()
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # N C H W, channels-last strides
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return x[:, :, top : top + out_h, left : left + out_w].permute(0, 2, 3, 1).contiguous().numpy()


def read_video(
    path: str | Path,
    frames: int = 8,
    size: int | tuple[int, int] | None = 112,
    start: int = 0,
    end: int | None = None,
) -> np.ndarray:
    """Decode ``frames`` uniformly sampled RGB frames of ``path[start:end]`` as uint8 ``(T, H, W, 3)``.

    Raises ``DataError`` naming the file when it is missing, undecodable, has no frames, or has fewer
    frames than its container declares (cut short: sampling would repeat the frames left).
    """
    import decord  # imported lazily: decord starts native threads on import

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: video file not found; check the dataset root or remove the sample")
    overrun = iso_box_overrun(path) or riff_overrun(path)
    if overrun:
        raise DataError(f"{path}: {overrun}; the file is truncated — re-encode or re-download it")
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        length = len(reader)
        declared = declared_frames(path)
        if declared is not None and length < declared - 1:  # one frame of slack for encoder delay
            raise DataError(f"{path}: video decodes {length} of the {declared} frames its header declares; "
                            "the file is truncated — re-encode or re-download it")
        stop = length if end is None else min(end, length)
        if stop - start <= 0:
            raise DataError(
                f"{path}: video has {length} frames, none in [{start}, {stop}); "
                "re-encode the file or fix its annotation"
            )
        idx = start + uniform_indices(stop - start, frames)
        try:
            data = reader.get_batch(idx.tolist()).asnumpy()
        except decord.DECORDError as exc:
            if "DECORDArrayCopyFromTo" not in str(exc):
                raise
            reader, height, width = _aligned_reader(path, reader)
            data = resize_crop(reader.get_batch(idx.tolist()).asnumpy(), (height, width))
    except DataError:
        raise
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError subclasses
        detail = re.sub(r"^\[[\d:]+\] \S+: ", "", str(exc).splitlines()[0])[:160]
        raise DataError(
            f"{path}: cannot decode video ({type(exc).__name__}: {detail}); "
            "the file is corrupt or truncated — re-encode or re-download it"
        ) from exc
    return resize_crop(data, size)


def declared_frames(path: str | Path) -> int | None:
    """The frame count an AVI file's main header declares (``avih.dwTotalFrames``); None for other
    containers or when the header does not say.

    Why: an AVI cut short loses its index at the end of the file, and the demuxer then counts only
    the frames still present (3 of 32 at half the bytes), so the decoder alone cannot tell a short
    clip from a truncated one. The header at the start survives the cut. (MP4: `iso_box_overrun`.)
    """
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head[:4] != b"RIFF" or head[8:12] != b"AVI ":
        return None
    at = head.find(b"avih")
    if at < 0 or at + 28 > len(head):
        return None
    total = struct.unpack_from("<I", head, at + 24)[0]  # after the tag, size and four 32-bit fields
    return int(total) or None


def riff_overrun(path: str | Path) -> str | None:
    """For an AVI file: how far its RIFF chunk runs past the end of the file, else None.

    Why: an AVI cut near its end (at 95 %) keeps its header's frame count and decodes every frame
    asked for, the last ones from partial data, so neither the count nor the decoder tells. The
    RIFF chunk states its size in the file's first 8 bytes, so any cut shows as a chunk that ends
    beyond the file. Files of other containers give None."""
    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror}); check its permissions") from None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"AVI ":
        return None
    declared = 8 + struct.unpack_from("<I", head, 4)[0]
    if declared > size:
        return f"its RIFF chunk declares {declared:,} bytes, {declared - size:,} past the end"
    return None


# top-level box types of ISO base media files (MP4, MOV, fragmented MP4): a cut is judged only
# on these, so bytes a tool appended after the last box are not taken for a box
ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"moof", b"mfra", b"meta",
             b"udta", b"sidx", b"styp", b"emsg", b"prft", b"pdin", b"ssix"}


def iso_box_overrun(path: str | Path) -> str | None:
    """For an MP4/MOV file: which top-level box runs past the end of the file, else None.

    Why: an MP4 written with its index first ("faststart", as web video is) and then cut short still
    opens; decord counts only the frames whose bytes are left (40 of 64 when cut where a frame
    starts) and nothing fails. Every top-level box states its size at its start, so a cut shows as a
    box that ends beyond the file. Files of other containers give None.
    """
    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8 or head[4:8] not in ISO_BOXES:
                return None
            at = 0
            while at + 8 <= size:
                fh.seek(at)
                box_size, kind = struct.unpack(">I4s", fh.read(8))
                if kind not in ISO_BOXES:  # not a box: trailing bytes, judged by the decoder
                    return None
                header = 8
                if box_size == 1:  # a 64-bit size follows the type
                    large = fh.read(8)
                    if len(large) < 8:
                        return f"its {kind.decode()!r} box header at byte {at:,} is cut short"
                    box_size, header = struct.unpack(">Q", large)[0], 16
                elif box_size == 0:  # the box runs to the end of the file by definition
                    return None
                if box_size < header:  # not a valid size: leave it to the decoder
                    return None
                if at + box_size > size:
                    return (f"its {kind.decode()!r} box declares {box_size:,} bytes from byte {at:,}, "
                            f"{at + box_size - size:,} past the end")
                at += box_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror}); check its permissions") from None
    return None


def _aligned_reader(path: Path, reader):
    """Reopen a video whose width is not a multiple of 32 (decord 0.6 mis-sizes such frames) so
    that decord scales it to an aligned width with the same aspect; returns the true height, width."""
    import decord

    height, width = reader[0].shape[:2]  # the shape is right even where the channel count is not
    aligned = -(-width // 32) * 32
    return decord.VideoReader(str(path), num_threads=1, width=aligned, height=round(height * aligned / width)), height, width


def read_image(path: str | Path, size: int | tuple[int, int] | None = None, gray: bool = False) -> np.ndarray:
    """Read a PNG/JPEG as uint8 ``(H, W, 3)`` (or ``(H, W, 1)`` with ``gray``), optionally resized."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found; check the dataset root or remove the sample")
    try:
        with Image.open(path) as img:
            arr = np.array(img.convert("L" if gray else "RGB"))  # a writable copy: torch warns on read-only arrays
    except Exception as exc:
        raise DataError(f"{path}: cannot decode image ({exc}); the file is corrupt — replace it") from exc
    if gray:
        arr = arr[..., None]
    return resize_crop(arr[None], size)[0] if size is not None else arr


def read_frames(paths: list[Path], size: int | tuple[int, int] | None = None, gray: bool = False) -> np.ndarray:
    """Read a list of frame images as one uint8 ``(T, H, W, C)`` array (EgoGesture-style folders)."""
    return resize_crop(np.stack([read_image(p, None, gray) for p in paths]), size)


def write_video(path: str | Path, frames: np.ndarray, fps: int = 30, crf: int = 18, faststart: bool = False) -> None:
    """Encode uint8 ``(T, H, W, 3)`` RGB frames as H.264 (``.avi`` or ``.mp4`` by suffix) with PyAV.

    Used by the synthetic generators and tests so the real decord path reads real files.
    Height and width must be even (yuv420p). ``faststart``: an MP4 with its index before the frames,
    as web video is written.
    """
    import av  # optional dependency: only writing videos needs it

    t, h, w, _ = frames.shape
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": str(crf), "tune": "zerolatency"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
