"""End-to-end search runs on real planted stores: run directory, determinism, kill + resume, multilabel,
streaming reader, and the second-order (unrolled) architecture gradient against exact autograd."""

import json

import pytest
import torch

from _search_data import planted_store, single_thread  # noqa: F401
from fusion_search.architect import Architect
from fusion_search.config import SearchConfig
from fusion_search.errors import SearchError
from fusion_search.genotype import Genotype
from fusion_search.hypernet import Hypernet, HypernetSpec
from fusion_search.training.metrics import loss_fn
from fusion_search.search import run_search

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def joint_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "joint.zarr"
    planted_store(path, "joint", n=240)
    return str(path)


def small(store, **kw):
    base = dict(store=store, cells=2, steps=2, channels=8, length=4, multiplier=2, epochs=2, batch_size=32,
                seed=0, score_min_steps=20, device="cpu", plots=False)
    base.update(kw)
    return SearchConfig(**base)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_run_directory_holds_everything(joint_store, tmp_path):
    result = run_search(small(joint_store, plots=True), tmp_path / "run")
    run = tmp_path / "run"
    metrics = lines(run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert {"train_loss", "arch_val_loss", "val", "genotype_score", "best_score", "best_epoch", "lr",
            "train_accuracy"} <= set(metrics[0])
    assert {"loss", "accuracy"} <= set(metrics[0]["val"])
    history = lines(run / "arch_history.jsonl")
    assert len(history) == 2 and len(history[0]["alpha"]) == 2 and len(history[0]["alpha"][1][0]) == 7
    best = metrics[-1]["best_epoch"]
    assert Genotype.load(run / "genotype.json") == Genotype.load(run / f"genotypes/epoch_{best:03d}.json")
    assert result.genotype == Genotype.load(run / "genotype.json")
    assert result.genotype_path == run / "genotype.json"
    for name in ("alpha.png", "beta.png", "gamma.png", "metrics.png"):
        assert (run / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    ckpt = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and {"model", "weight_optimizer", "arch_optimizer", "scheduler", "rng"} <= set(ckpt)
    assert "search on" in (run / "log.txt").read_text()
    assert (run / "config.yaml").read_text().startswith("kind: search\nstore: ")
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    with pytest.raises(SearchError, match="exists and is not empty"):
        run_search(small(joint_store), run)


def test_same_seed_same_genotype_other_seed_other_weights(joint_store, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run_search(small(joint_store, seed=seed, epochs=1), tmp_path / name)
    a, b, c = (tmp_path / n for n in "abc")
    assert (a / "genotype.json").read_text() == (b / "genotype.json").read_text()
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    assert (a / "arch_history.jsonl").read_text() == (b / "arch_history.jsonl").read_text()
    assert (a / "arch_history.jsonl").read_text() != (c / "arch_history.jsonl").read_text()


class Killed(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [dict(step_inputs="sum"), dict(step_inputs="pair"),
                                 dict(step_inputs="sum", arch_warmup_epochs=1, candidates=3)])
def test_killed_and_resumed_search_equals_uninterrupted(joint_store, tmp_path, cfg):
    cfg = dict(epochs=3, **cfg)
    run_search(small(joint_store, **cfg), tmp_path / "whole")

    def kill(epoch, batch):
        if epoch == 1 and batch == 2:  # in the middle of the second epoch
            raise Killed

    with pytest.raises(Killed):
        run_search(small(joint_store, **cfg), tmp_path / "cut", on_batch=kill)
    assert len(lines(tmp_path / "cut/metrics.jsonl")) == 1
    run_search(small(joint_store, **cfg), tmp_path / "cut", resume=True)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for name in ("genotype.json", "metrics.jsonl", "arch_history.jsonl", "genotypes/epoch_003.json"):
        assert (whole / name).read_text() == (cut / name).read_text(), name
    a = torch.load(whole / "checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(cut / "checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "resumed after epoch 1" in (cut / "log.txt").read_text()


def test_arch_warmup_freezes_architecture_weights_and_skips_scoring(joint_store, tmp_path):
    run_search(small(joint_store, epochs=3, arch_warmup_epochs=2), tmp_path / "run")
    history = lines(tmp_path / "run/arch_history.jsonl")
    metrics = lines(tmp_path / "run/metrics.jsonl")
    assert history[0] == {**history[1], "epoch": 1}  # α, β, γ untouched by the two warm-up epochs
    assert history[2]["alpha"] != history[1]["alpha"]
    assert [m["genotype_score"] is None for m in metrics] == [True, True, False]
    assert [m["arch_val_loss"] is None for m in metrics] == [True, True, False]
    assert metrics[-1]["best_epoch"] == 3
    assert "arch warm-up, genotype not scored" in (tmp_path / "run/log.txt").read_text()
    with pytest.raises(SearchError, match="arch-warmup-epochs"):
        run_search(small(joint_store, epochs=3, arch_warmup_epochs=3), tmp_path / "bad")


def test_candidates_keep_the_best_scored_of_the_alpha_ranked_genotypes(joint_store, tmp_path):
    run_search(small(joint_store, epochs=1), tmp_path / "one")
    run_search(small(joint_store, epochs=1, candidates=4), tmp_path / "four")
    one = torch.load(tmp_path / "one/checkpoints/last.pt", weights_only=True)
    four = torch.load(tmp_path / "four/checkpoints/last.pt", weights_only=True)
    assert len(one["scores"]) == 1 and len(four["scores"]) == 4
    assert set(one["scores"].items()) <= set(four["scores"].items())  # eq. 3's genotype is candidate 1
    assert four["best"]["score"] == max(four["scores"].values())
    kept = Genotype.load(tmp_path / "four/genotype.json")
    assert four["scores"][kept.key()] == four["best"]["score"]


def test_resume_before_the_first_checkpoint_starts_over(joint_store, tmp_path):
    with pytest.raises(SearchError, match="no config.yaml"):
        run_search(small(joint_store), tmp_path / "never", resume=True)
    cfg = small(joint_store, epochs=1, cells=1, steps=1, multiplier=1)
    run_search(cfg, tmp_path / "whole")

    def kill(epoch, batch):
        if batch == 1:
            raise Killed

    with pytest.raises(Killed):
        run_search(cfg, tmp_path / "cut", on_batch=kill)
    (tmp_path / "cut/metrics.jsonl").write_text('{"epoch": 1}\n')  # as if killed before the checkpoint
    run_search(cfg, tmp_path / "cut", resume=True)
    for name in ("genotype.json", "metrics.jsonl", "arch_history.jsonl"):
        assert (tmp_path / "whole" / name).read_text() == (tmp_path / "cut" / name).read_text(), name
    assert "restarting the search" in (tmp_path / "cut/log.txt").read_text()


def test_multilabel_search_reports_f1(tmp_path):
    planted_store(tmp_path / "ml.zarr", "multilabel", n=200)
    result = run_search(small(str(tmp_path / "ml.zarr"), epochs=1, cells=1, steps=1, multiplier=1, score="hypernet"),
                        tmp_path / "run")
    val = lines(tmp_path / "run/metrics.jsonl")[0]["val"]
    assert {"f1_weighted", "f1_micro", "f1_macro", "f1_samples"} <= set(val)
    assert result.genotype.task == "multilabel" and result.genotype.num_classes == 3
    assert result.best_score == val["f1_weighted"]  # score: hypernet keeps the hypernet's weighted F1


def test_streaming_reader_when_split_exceeds_memory_budget(joint_store, tmp_path):
    from fusion_search.data import open_split
    from stores import open_store

    store = open_store(joint_store)
    split = open_split(store, "train", store.nodes, torch.device("cpu"), memory_budget_bytes=1000)
    assert not split.in_ram
    rows = sum(len(y) for _, y in split.batches(32, seed=0))
    assert rows == split.num_rows == len(store.splits["train"])
    result = run_search(small(joint_store, epochs=1, memory_budget_gb=1e-6), tmp_path / "run")
    assert len(result.genotype.cells) == 2


def test_store_without_val_and_unknown_nodes_are_user_errors(tmp_path, joint_store):
    import numpy as np
    from stores import write_store_from_arrays

    write_store_from_arrays(tmp_path / "noval.zarr", features={"a_1": np.zeros((8, 2, 2)), "b_1": np.zeros((8, 2, 2))},
                            labels=np.arange(8) % 2, splits={"train": np.arange(8)}, task="multiclass", num_classes=2)
    with pytest.raises(SearchError, match="no rows in split 'val'.*search needs train and val"):
        run_search(small(str(tmp_path / "noval.zarr")), tmp_path / "r1")
    with pytest.raises(SearchError, match="unknown node.*zz_1"):
        run_search(small(joint_store, nodes=["a_1", "zz_1"]), tmp_path / "r2")
    with pytest.raises(SearchError, match="--steps 9 is out of range"):
        run_search(small(joint_store, steps=9), tmp_path / "r3")
    with pytest.raises(SearchError, match="--multiplier 3 is out of range"):
        run_search(small(joint_store, multiplier=3), tmp_path / "r4")


def test_unrolled_gradient_matches_exact_second_order():
    torch.manual_seed(0)
    shapes = {"a_1": (4, 3), "b_1": (3, 2), "b_2": (5, 4)}
    spec = HypernetSpec(nodes=tuple(shapes), node_shapes=shapes, task="multiclass", num_classes=3, cells=2, steps=2,
                        C=6, L=3, multiplier=2, step_inputs="pair", dropout=0.0)
    model = Hypernet(spec).double()
    g = torch.Generator().manual_seed(1)

    def batch(n):
        return ({k: torch.randn(n, c, t, generator=g, dtype=torch.float64) for k, (c, t) in shapes.items()},
                torch.randint(0, 3, (n,), generator=g))

    train, val = batch(12), batch(10)
    xi, wd = 0.05, 3e-4
    arch, weights = model.arch_parameters(), model.weight_parameters()
    loss = lambda z, y: loss_fn("multiclass", z, y)  # noqa: E731
    # DARTS' ε = 0.01/||v|| crosses ReLU kinks (a few % off); a small ε shows the estimator itself is exact
    architect = Architect(model, arch, weights, torch.optim.Adam(arch), loss, unrolled=True, weight_decay=wd,
                          fd_eps=1e-5)
    _, approx = architect._unrolled_grads(val, train, xi)

    names = {id(p): n for n, p in model.named_parameters()}
    a = {names[id(p)]: p for p in arch}
    w = {names[id(p)]: p for p in weights}
    call = torch.func.functional_call
    g_train = torch.autograd.grad(loss(call(model, {**w, **a}, (train[0],)), train[1]), list(w.values()),
                                  create_graph=True)
    w2 = {n: p - xi * (gr + wd * p) for (n, p), gr in zip(w.items(), g_train)}
    exact = torch.autograd.grad(loss(call(model, {**w2, **a}, (val[0],)), val[1]), list(a.values()))
    first = torch.autograd.grad(loss(model(val[0]), val[1]), arch)
    for ap, ex, fo in zip(approx, exact, first):
        assert torch.allclose(ap, ex, rtol=1e-4, atol=1e-9)
    assert not all(torch.allclose(fo, ex, rtol=1e-4, atol=1e-9) for fo, ex in zip(first, exact))


def test_unrolled_search_runs(joint_store, tmp_path):
    result = run_search(small(joint_store, epochs=1, unrolled=True, cells=1, steps=1, multiplier=1), tmp_path / "u")
    assert len(result.genotype.cells) == 1


def test_op_variants_only_add_candidates_to_the_same_search(joint_store, tmp_path):
    """Scoring runs in a forked RNG, so the hypernet's trajectory is the same with and without
    variants; every epoch's candidate set only grows, and so does each epoch's kept score."""
    plain = run_search(small(joint_store, epochs=3, cross_modal=True), tmp_path / "plain")
    varied = run_search(small(joint_store, epochs=3, cross_modal=True, op_variants=True), tmp_path / "varied")
    a, b = lines(tmp_path / "plain" / "metrics.jsonl"), lines(tmp_path / "varied" / "metrics.jsonl")
    assert [r["val"] for r in a] == [r["val"] for r in b]  # same hypernet
    assert all(rb["genotype_score"] >= ra["genotype_score"] for ra, rb in zip(a, b))
    assert varied.best_score >= plain.best_score
    for g in (plain.genotype, varied.genotype):  # cross-modal: a Cell's two store nodes differ in modality
        for c in g.cells:
            stores = [n for n in c.inputs if not n.startswith("cell_")]
            assert len(stores) < 2 or stores[0][0] != stores[1][0]


def test_compiled_search_runs_resumes_and_tracks_the_eager_one(joint_store, tmp_path):
    """--compile: the weight and arch steps run torch.compile's hypernet (the same parameters, so the
    checkpoints are the eager module's); killed mid-epoch and resumed, it compiles again and ends with
    the lines of every epoch; its first epoch's losses are the eager search's to float rounding."""
    cfg = dict(epochs=2, compile=True, dropout=0.0)  # dropout: compiled graphs draw other masks

    def kill(epoch, batch):
        if epoch == 1 and batch == 2:
            raise Killed

    with pytest.raises(Killed):
        run_search(small(joint_store, **cfg), tmp_path / "cut", on_batch=kill)
    run_search(small(joint_store, **cfg), tmp_path / "cut", resume=True)
    compiled = lines(tmp_path / "cut/metrics.jsonl")
    assert [r["epoch"] for r in compiled] == [1, 2] and (tmp_path / "cut/genotype.json").is_file()
    assert "compile: true" in (tmp_path / "cut/config.yaml").read_text()
    run_search(small(joint_store, epochs=2, dropout=0.0), tmp_path / "eager")
    eager = lines(tmp_path / "eager/metrics.jsonl")
    assert compiled[0]["train_loss"] == pytest.approx(eager[0]["train_loss"], rel=1e-3)
    with pytest.raises(SearchError, match="--compile: first-order search only"):
        run_search(small(joint_store, compile=True, unrolled=True), tmp_path / "both")
