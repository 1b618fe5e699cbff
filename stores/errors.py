"""The one error a store raises: it names the store path or array and what is wrong."""


class StoreError(Exception):
    """A feature store is missing, malformed, incomplete or inconsistent."""


class BusyError(StoreError):
    """Another process holds the lock of a store or run directory (the message names it)."""
