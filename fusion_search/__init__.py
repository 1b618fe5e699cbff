"""Stage 2: BM-NAS hypernet, primitives, bilevel DARTS search, genotypes, found networks, and the
training core every training stage shares.

Search space and search: `primitives` (eqs. 4-8, the `PRIMITIVES` registry), `blocks` (ReshapeInput,
Cell output, head), `hypernet` (α/β/γ relaxation, `sum`/`pair` step inputs), `architect` (the
architecture step, first or second order), `search` (Algorithm 1, its run directory, resume),
`config` (SearchConfig, YAML, validation), `data` (store splits as tensors), `history` (α/β/γ per
epoch and their heatmaps).
Genotypes: `derive` (eqs. 3 and 11, top-2 β, candidates, op variants), `genotype` (format v1,
validation, show), `render` (dot / matplotlib), `found_network` (the discrete net), `baselines`
(the paper's baselines and ablation rows as genotypes), `evaluation` (split metrics, genotype scoring).
The training core is the subpackage `training` (`engine`: `fit`, `predict`, `FitOptions`; `metrics`;
`schedule`: Adam + cosine warm restarts; `rundir`: the run directory of search, train, finetune and
pretrain; `run_checkpoint`: last.pt and best.pt; `events`: TensorBoard scalars), below the rest:
it imports nothing of the search space. `errors` holds SearchError. Imports only `stores` from
this project.
"""
