"""The training core every stage trains through, below the stages: the engine (`fit`, `predict`,
`FitOptions`), the optimiser and schedule, the metrics, atomic checkpoints, the run directory
(config, log, per-epoch records, best-epoch rule, resume) and TensorBoard events.

Why a room of its own: search, scoring, train, finetune and pretrain share it, and it knows nothing
of the search space (it imports only `fusion_search.errors` and `stores`; the import contract in
setup.cfg holds it to that).
"""
