"""Stage 2: BM-NAS hypernet, primitives, bilevel DARTS search, genotypes, found networks."""
