"""Planted signal: the label depends jointly on nodes a_2 and b_3 (each alone explains half of it),
four look-alike nodes are distractors. With one Cell, the derived Cell must read exactly {a_2, b_3}.

Small store (200 train rows), so the search runs 12 epochs of batch 16 with an architecture lr of
3e-3 (10x the design's default, which needs more steps than a tiny store has); everything else is default.
Recovery rates over more seeds, and the pure-interaction (XOR) case: bench/search_planted.py.
"""

import pytest

from _search_data import PLANTED, planted_store, single_thread  # noqa: F401
from fusion_search.config import SearchConfig
from fusion_search.search import run_search

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "joint.zarr"
    planted_store(path, "joint", n=320)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("step_inputs,seed", [("sum", 0), ("sum", 1), ("sum", 2), ("pair", 0), ("pair", 1)])
def test_cell_selects_the_planted_pair(store, tmp_path, step_inputs, seed):
    cfg = SearchConfig(store=store, cells=1, steps=1, channels=8, length=4, multiplier=1, epochs=12, batch_size=16,
                       seed=seed, step_inputs=step_inputs, arch_lr=3e-3, score_min_steps=60, device="cpu", plots=False)
    result = run_search(cfg, tmp_path / "run")
    assert set(result.genotype.cells[0].inputs) == set(PLANTED)
    assert result.best_score > 0.4  # 4 classes: the found network beats chance (0.25) clearly
