"""Test set-up for tests/ and the doctests of jaxlm/, before JAX starts: 4 fake CPU devices, a
private TFDS data directory (one per pytest-xdist worker, so no two processes prepare the same
corpus at once), and an XLA compilation cache for this run, shared by the workers and the
subprocesses they start (a step that several tests compile alike is compiled once: the suite
takes about 0.85 of its time without it). A cache entry read while another process writes it
is only a warning and a recompile in JAX.

XLA compiles the suite's programs at backend optimisation level 0 (inherited by the
subprocesses): the programs under test are the same HLO, partitioned the same way, and their
shapes are tiny, so LLVM's optimisation is nearly all cost (tests/test_sampling.py takes 0.63
of its CPU time). Benchmarks and real runs keep XLA's default level.
"""

import os
import tempfile

_base = os.environ.setdefault("JAXLM_DATA_DIR", tempfile.mkdtemp(prefix="jaxlm-tfds-"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["JAXLM_DATA_DIR"] = os.path.join(_base, os.environ["PYTEST_XDIST_WORKER"])
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxlm-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    _flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    os.environ["XLA_FLAGS"] = _flags.strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)


def pytest_collection_modifyitems(config, items):
    """The ``heavy`` tests first, the rest in their order: the longest jobs started first end
    the pytest-xdist workers close together, instead of one of them alone on a long last test."""
    del config
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)
