"""The user-caused errors of every room, so the CLI can turn them into one line and exit 2.

Each room owns its own error class (stores imports nothing of the project); this is the one
place that lists them. A room that adds an error class adds it here.
"""

from __future__ import annotations

from stores.errors import StoreError


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception classes that mean "the user gave bad input", not "the program is broken"."""
    classes: list[type[BaseException]] = [StoreError, FileNotFoundError]
    try:  # rooms that are not importable (missing optional deps) are skipped
        from fusion_search.errors import SearchError

        classes.append(SearchError)
    except ImportError:
        pass
    try:
        from extract.errors import ExtractError

        classes.append(ExtractError)
    except ImportError:
        pass
    return tuple(classes)
