"""Raw-data sources: one interface (`Source`) for every dataset adapter."""

from extract.sources.base import Sample, Source

__all__ = ["Sample", "Source"]
