"""jaxlm: a functional JAX library for language models."""

__version__ = "0.1.0"
