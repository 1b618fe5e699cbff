"""Feature store format v1: a chunked zarr v3 group of per-node (N, C, T) features.

Public API: `create_store`, `is_bmnas_store`, `open_writer`, `open_store`, `write_store_from_arrays`,
`verify_store`, `store_info`, `FeatureBank`, `StreamingReader`, `StoreError`, `NodeSpec`.
"""

from stores.errors import StoreError
from stores.schema import FORMAT, VERSION, NodeSpec
from stores.writer import StoreWriter, create_store, is_bmnas_store, open_writer, write_store_from_arrays
from stores.reader import FeatureStore, open_store
from stores.loading import FeatureBank, StreamingReader
from stores.verify import store_info, verify_store

__all__ = [
    "FORMAT", "VERSION", "NodeSpec", "StoreError", "StoreWriter", "create_store", "is_bmnas_store", "open_writer",
    "write_store_from_arrays", "FeatureStore", "open_store", "FeatureBank", "StreamingReader",
    "store_info", "verify_store",
]
