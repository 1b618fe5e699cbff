"""The user-error class of the search room: bad options, bad genotype files, stores unfit for search."""


class SearchError(Exception):
    """A search option, config file, genotype file or store cannot be used; the message says what to do."""
