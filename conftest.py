"""Test set-up for tests/ and the doctests of jaxlm/: 4 fake CPU devices and a private TFDS
data directory, before JAX starts."""

import os
import tempfile

os.environ.setdefault("JAXLM_DATA_DIR", tempfile.mkdtemp(prefix="jaxlm-tfds-"))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
