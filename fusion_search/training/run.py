"""`Run`: the one owner of a run directory's life (search, train, finetune, pretrain).

  config.yaml   the resolved settings and the run's `kind`, written when the run is created
  run.json      {kind, status, started, ended, bmnas, results, store, accepted_store_changes}:
                `status` is "running" from creation and "finished" only when `finish` writes it, last
                and atomically; `store` is the identity of the store the run read (`bind_store`)
  log.txt, metrics.jsonl, tensorboard/, checkpoints/ (as `fusion_search.training.rundir` says)

A run is in one `state`: "new" (no directory, or an empty one), "unstarted" (created, but killed
before its first checkpoint: nothing worth keeping), "partial" (a checkpoint to resume from) or
"finished". Why one owner: "finished", the refusal of a used `--out`, the lock, the settings a
resume must share, and the restart of an unstarted run each have one meaning and one message,
whichever stage runs.

Use: `with Run.create(out, kind, config) as run:` (a new run; an unstarted run of the same kind
there is replaced; a run refused for bad input before its first checkpoint leaves no directory) or
`with Run.open(path, kinds) as run:` (an existing run); the lock is held and the log and
TensorBoard files are open for the block.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, TypeVar

from fusion_search.errors import SearchError
from fusion_search.training.distributed import World
from fusion_search.training.events import EVENTS, EpochEvents
from fusion_search.training.rundir import CONFIG, LAST, LOG, METRICS, EpochBook, read_config, run_log
from stores.errors import StoreError
from stores.files import write_json_atomic, write_yaml_atomic
from stores.identity import changed_parts, store_identity
from stores.lock import exclusive

T = TypeVar("T")
RUN_RECORD = "run.json"
KINDS = ("search", "train", "finetune", "pretrain")
NEW, UNSTARTED, PARTIAL, FINISHED = "new", "unstarted", "partial", "finished"

# what any run writes before its first checkpoint (a stage adds its own names through `unstarted=`)
UNSTARTED_FILES = frozenset({CONFIG, RUN_RECORD, LOG, METRICS, EVENTS, "checkpoints", "genotype.json"})


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("bmnas")
    except Exception:  # noqa: BLE001 - a source checkout that is not installed
        return "unknown"


def _stem(name: str) -> str:
    """A file's name without the temporary suffix `stores.files.replace_atomic` gives (NAME.<hex>.partial)."""
    parts = name.rsplit(".", 2)
    return parts[0] if len(parts) == 3 and parts[2] == "partial" else name


def settings_diff(old: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = ("device",)) -> list[str]:
    """The names of the settings that differ between two configs (`ignore`d ones aside), sorted."""
    skip = set(ignore)
    return sorted(k for k in set(old) | set(new) if k not in skip and old.get(k) != new.get(k))


@contextmanager
def hold_folder(out: str | os.PathLike, allowed: Iterable[str], what: str,
                error: type[Exception] = SearchError) -> Iterator[Path]:
    """Hold the folder of a stage that holds many runs (an ablation's) for the block: locked, refused
    when it is a file or holds anything but the names that stage writes (`allowed`; hidden files and a
    kill's temporary files aside), so a rerun never mixes with, or reports, what it did not make."""
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise error(f"--out {root} is a file, not a {what} directory: give a directory path")
    with exclusive(root, f"{what} directory"):
        names = [p.name for p in root.iterdir()] if root.is_dir() else []
        foreign = sorted(n for n in names if not n.startswith(".") and _stem(n) not in set(allowed))
        if foreign:
            raise error(f"--out {root} holds {', '.join(foreign[:3])}, which no {what} writes: give a new --out")
        root.mkdir(parents=True, exist_ok=True)
        yield root


def rerun(path: str | os.PathLike, start: Callable[[], T], resume: Callable[[], T],
          reuse: Callable[[], T] | None = None) -> T:
    """The one decision of a stage that reruns many runs (multi-start, ablation, the demo) for one of
    them: a finished run is reused (`reuse`; without one it is resumed, which re-reports it), a partial
    one resumed, anything else started (`Run.create` replaces an unstarted run a kill left)."""
    state = run_state(path)
    if state == FINISHED and reuse is not None:
        return reuse()
    return resume() if state in (PARTIAL, FINISHED) else start()


def run_state(path: str | os.PathLike) -> str:
    """The state of the run at `path` (new, unstarted, partial, finished), read without taking its lock:
    what a stage that reruns many runs (multi-start, ablation, the demo) decides each one's next step by."""
    return Run(path, "search", SearchError).state


@contextmanager
def shared_run(world: World, hold: Callable[[], ContextManager["Run"]],
               error: type[Exception] = SearchError) -> Iterator["Run"]:
    """The run of a command that several processes run together (torchrun): rank 0 holds it (`hold`:
    a `Run.create` or `Run.open`), the other ranks follow it (`Run.follower`) once rank 0 holds it.
    A refusal on rank 0 (a used --out, a missing checkpoint) is the same refusal on every rank."""
    if world.size == 1:
        with hold() as run:
            yield run
        return
    if not world.main:
        told = world.broadcast(None)
        if isinstance(told, str):
            raise error(told)
        yield Run.follower(*told, error=error)
        return
    with ExitStack() as stack:
        try:
            run = stack.enter_context(hold())
        except Exception as exc:
            world.broadcast(str(exc))
            raise
        world.broadcast((str(run.path), run.kind, run.config))
        yield run


class Run:
    """A run directory held by this process (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, kind: str, error: type[Exception]) -> None:
        self.path, self.kind, self.error = Path(path), kind, error
        self.config: dict[str, Any] = {}
        self.log: logging.Logger | None = None
        self.events: EpochEvents | None = None
        self.writer = True  # False: a follower (`shared_run`), which writes nothing
        self._open = ExitStack()

    # --- the two ways in -----------------------------------------------------------------------

    @classmethod
    @contextmanager
    def create(cls, out: str | os.PathLike, kind: str, config: dict[str, Any], error: type[Exception] = SearchError,
               unstarted: Iterable[str] = ()) -> Iterator["Run"]:
        """A new run of `kind` in `out`, config.yaml and run.json written; refused when `out` is a file or
        holds anything but an unstarted run of this kind (which is replaced: nothing in it is kept)."""
        run = cls(out, kind, error)
        run._refuse_file()
        with exclusive(run.path, "run directory"):
            if run.state != NEW:
                run._replace_unstarted(unstarted)
            existed = run.path.is_dir()
            try:
                with run._open:
                    run._start(config)
                    yield run
            except (error, SearchError, StoreError):  # refused (bad input): a kill or a bug keeps the files
                run._remove_if_unstarted(existed)
                raise

    def _start(self, config: dict[str, Any]) -> None:
        """The directory, config.yaml (with the kind), run.json (running), the log and events."""
        (self.path / LAST).parent.mkdir(parents=True, exist_ok=True)
        self.config = {"kind": self.kind, **{k: v for k, v in config.items() if k != "kind"}}
        write_yaml_atomic(self.path / CONFIG, self.config)
        write_json_atomic(self.path / RUN_RECORD, {"kind": self.kind, "status": "running",
                                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                   "bmnas": _version()})
        self._outputs()

    def _remove_if_unstarted(self, existed: bool) -> None:
        """A run refused before its first checkpoint leaves no half run directory (an empty folder the
        user made stays, empty)."""
        if self.path.is_dir() and self.state == UNSTARTED:
            shutil.rmtree(self.path)
            if existed:
                self.path.mkdir()

    @classmethod
    @contextmanager
    def open(cls, path: str | os.PathLike, kinds: Iterable[str] = KINDS, error: type[Exception] = SearchError,
             outputs: bool = True) -> Iterator["Run"]:
        """An existing run whose kind is one of `kinds`, locked, its config read (a search run written
        before configs named their kind counts as "search"); with `outputs`, its log and events open."""
        kinds = tuple(kinds)
        probe = cls(path, kinds[0], error)
        probe._refuse_file()
        with exclusive(probe.path, "run directory"), probe._open:
            probe.config = read_config(probe.path, error, f"is it a run directory of `bmnas {kinds[0]}`?")
            probe.kind = str(probe.config.get("kind", "search"))
            probe._check_kind(kinds)
            if outputs:
                probe._outputs()
            yield probe

    @classmethod
    def follower(cls, path: str | os.PathLike, kind: str, config: dict[str, Any],
                 error: type[Exception] = SearchError) -> "Run":
        """Another rank's view of the run rank 0 holds (`shared_run`): its path and config, a log that
        goes nowhere, and no writes."""
        run = cls(path, kind, error)
        run.config, run.writer = dict(config), False
        run.log = logging.getLogger(f"bmnas.{kind}.follower")
        run.log.propagate = False  # no handler: nothing a follower logs goes anywhere
        return run

    # --- what a run is --------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """new, unstarted, partial or finished (see the module docstring)."""
        if not self.path.is_dir() or not any(self.path.iterdir()):
            return NEW
        if self.record().get("status") == "finished":
            return FINISHED
        return PARTIAL if (self.path / LAST).is_file() else UNSTARTED

    def record(self) -> dict[str, Any]:
        """run.json as a mapping ({} for a run written before run.json existed, or a damaged one)."""
        import json

        try:
            data = json.loads((self.path / RUN_RECORD).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def require_checkpoint(self) -> None:
        """Refuse a resume of a run that has nothing to resume from."""
        if not (self.path / LAST).is_file():
            raise self.error(f"--resume {self.path}: no {LAST}; the run stopped before its first epoch ended, "
                             f"start it again with `bmnas {self.kind} --out {self.path}`")

    # --- writing -------------------------------------------------------------------------------

    def book(self, key: str) -> EpochBook:
        """The per-epoch bookkeeping (best-on-val by `rundir.improves`, best.pt, metrics, last.pt)."""
        return EpochBook(self.path, key, self.events, writes=self.writer)

    def write_json(self, name: str, data: Any, indent: int | None = 2) -> Path:
        """A result file of the run, replaced whole (by the writer only)."""
        path = self.path / name
        if self.writer:
            write_json_atomic(path, data, indent=indent)
        return path

    def bind_store(self, store: Any) -> None:
        """Record the identity of the store this run reads (`stores.identity`) in run.json."""
        self._update_record(store={"path": str(store.path), **store_identity(store)})

    def check_store(self, store: Any, accept_changed: bool = False) -> None:
        """Refuse a store that is not the one this run read (re-extracted under its path, other labels,
        splits or nodes), in one line saying what changed; `accept_changed` goes on and records it.
        A run made before runs recorded their store is not compared."""
        record = self.record()
        if not record.get("store"):
            return
        changed = changed_parts(record["store"], store_identity(store))
        if not changed:
            return
        if not accept_changed:
            raise self.error(f"--store {store.path} is not the store {self.path} was made from: its "
                             f"{', '.join(changed)} changed (re-extracted or rewritten?); use that store, or pass "
                             "--accept-changed-store to go on with this one")
        self._update_record(accepted_store_changes=record.get("accepted_store_changes", []) + [
            {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "store": str(store.path), "changed": changed}])

    def _update_record(self, **fields: Any) -> None:
        if not self.writer:
            return
        rec = self.record() or {"kind": self.kind, "bmnas": _version()}
        rec.update(fields)
        write_json_atomic(self.path / RUN_RECORD, rec)

    def finish(self, results: Iterable[str] = ()) -> None:
        """Mark the run finished: run.json rewritten last, naming the result files."""
        self._update_record(status="finished", ended=time.strftime("%Y-%m-%dT%H:%M:%S"), results=sorted(results))

    # --- internals -----------------------------------------------------------------------------

    def _refuse_file(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise self.error(f"--out {self.path} is a file, not a run directory: give a directory path")

    def _replace_unstarted(self, extra: Iterable[str]) -> None:
        """Remove an unstarted run of this kind (its files only, nothing else there); refuse anything else."""
        foreign = [p.name for p in self.path.iterdir() if _stem(p.name) not in UNSTARTED_FILES | set(extra)]
        kind = read_config(self.path, self.error).get("kind", "search") if (self.path / CONFIG).is_file() else None
        if self.state == UNSTARTED and not foreign and kind in (None, self.kind):
            shutil.rmtree(self.path)
            return
        held = (self.path / LAST).is_file()  # partial or finished: --resume continues or re-reports it
        resume = f" or continue it with `bmnas {self.kind} --resume {self.path}`" if held else ""
        what = f" (it holds {', '.join(sorted(foreign)[:3])})" if foreign and not held else ""
        raise self.error(f"--out {self.path} exists and is not empty{what}: choose a new run directory{resume}")

    def _check_kind(self, kinds: tuple[str, ...]) -> None:
        if self.kind in kinds:
            return
        if self.kind in KINDS:
            raise self.error(f"{self.path}: a {self.kind} run, not a {' or '.join(kinds)} run; use "
                             f"`bmnas {self.kind}` with it")
        raise self.error(f"{self.path / CONFIG}: kind {self.kind!r} is not a bmnas run")

    def _outputs(self) -> None:
        self.log = self._open.enter_context(run_log(self.path, self.kind))
        self.events = self._open.enter_context(EpochEvents(self.path))

