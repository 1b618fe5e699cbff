"""Raw-data sources: one interface (`Source`) for every dataset adapter; `open_source` opens one
by kind (ntu, mmimdb, egogesture, manifest) and path."""

from extract.sources.base import ListedSource, Sample, Source
from extract.sources.registry import KINDS, detect_kind, open_source

__all__ = ["KINDS", "ListedSource", "Sample", "Source", "detect_kind", "open_source"]
