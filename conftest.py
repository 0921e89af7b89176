"""Test set-up for tests/ and the doctests of jaxlm/, before JAX starts: 4 fake CPU devices and
a private TFDS data directory (one per pytest-xdist worker, so no two processes prepare the same
corpus at once)."""

import os
import tempfile

_base = os.environ.setdefault("JAXLM_DATA_DIR", tempfile.mkdtemp(prefix="jaxlm-tfds-"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["JAXLM_DATA_DIR"] = os.path.join(_base, os.environ["PYTEST_XDIST_WORKER"])

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
