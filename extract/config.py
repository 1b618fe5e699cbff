"""The settings of an extraction, apart from the backbones: one frozen dataclass each, without torch.

Why a module of its own: `bmnas extract` takes its options' defaults from these fields (one place for
every default), and the command line must not import torch to print its help.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from extract.errors import ExtractError


@dataclass(frozen=True)
class ReductionConfig:
    """t_max caps the cached length of video/skeleton taps; grid is the image map side."""

    t_max: int = 32
    grid: int = 4

    def __post_init__(self) -> None:
        for option, value in (("--t-max", self.t_max), ("--grid", self.grid)):
            if not isinstance(value, int) or value < 1:  # 0 would cache nodes of length 0
                raise ExtractError(f"{option} {value!r}: use a positive integer")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExtractConfig:
    """How an extraction runs. The defaults of `bmnas extract`'s options are these fields' defaults."""

    reduction: ReductionConfig = ReductionConfig()
    dtype: str = "auto"  # per node: float16 while the probe stays below 1/8 of its range, else float32
    rows_per_chunk: int = 64
    chunks_per_task: int = 1
    codec: str = "zstd"
    batch_size: int = 16
    use_dask: bool = True
    scheduler: str | None = None
    workers: int = 2
    threads_per_worker: int = 1
    decode_threads: int | str = "auto"  # per worker: threads reading a batch's samples (`worker.decode_threads_for`)
    device: str = "auto"  # checked on the workers (a head node needs no GPU)
    precision: str = "auto"  # the forward's compute precision; auto: `extract.precision.auto_precision`
    on_error: str = "fail"
    overwrite: bool = False
    progress: bool = True
    timeout: float = 10.0

    @property
    def mode(self) -> str:
        return "in-process" if not self.use_dask else ("scheduler" if self.scheduler else "local-cluster")
