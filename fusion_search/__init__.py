"""Stage 2: BM-NAS hypernet, primitives, bilevel DARTS search, genotypes, found networks.

Modules: `primitives` (eqs. 4-8, the registry), `blocks` (ReshapeInput, Cell output, head),
`hypernet` (α/β/γ relaxation, `sum`/`pair` step inputs), `derive` (eqs. 3 and 11, top-2 β),
`genotype` (format v1, validation, show), `render` (dot / matplotlib), `found_network` (the discrete
net), `architect` (weight and architecture steps, first/second order), `search` (Algorithm 1, run
directory, checkpoints, resume), `config`, `data` (store splits as tensors), `evaluation`, `metrics`,
`history` (α/β/γ heatmaps). Imports only `stores` from this project.
"""
