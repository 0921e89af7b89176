"""Test set-up for tests/ and the doctests of jaxlm/, before JAX starts: 4 fake CPU devices, a
private TFDS data directory (one per pytest-xdist worker, so no two processes prepare the same
corpus at once), and an XLA compilation cache for this run, shared by the workers and the
subprocesses they start (a step that several tests compile alike is compiled once: the suite
takes about 0.85 of its time without it). A cache entry read while another process writes it
is only a warning and a recompile in JAX.
"""

import os
import tempfile

_base = os.environ.setdefault("JAXLM_DATA_DIR", tempfile.mkdtemp(prefix="jaxlm-tfds-"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["JAXLM_DATA_DIR"] = os.path.join(_base, os.environ["PYTEST_XDIST_WORKER"])
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxlm-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
