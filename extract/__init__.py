"""Stage 1: data sources, backbones with named taps, reduction, dask extraction, pretraining."""
