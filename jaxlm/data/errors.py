"""Errors of the data package (kept apart so importing them does not import TFDS)."""


class CorpusError(ValueError):
    """A corpus that cannot be used: missing, empty, ambiguous or undecodable."""
