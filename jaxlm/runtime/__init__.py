"""What depends on the backend and the process: CPU heap policy, XLA options, backend switches.

Every place that acts differently on CPU, on one device or across processes asks here, so the
switches are in one file:

- :func:`on_cpu`: XLA's CPU backend (the Transformer writes its attention out in blocks, steps
  may use oneDNN matrix products: :func:`compiler_options`);
- :func:`single_cpu_device`: the recurrent time loop runs two batch slices side by side;
- :func:`serialise_steps`: several CPU devices or processes wait for each step;
- :func:`async_checkpointing`: one process saves in the background.

:func:`keep_freed_memory` (``jaxlm.runtime.heap``) is the glibc heap policy that
``python -m jaxlm.train`` sets before JAX starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxlm._lazy import attach

__all__ = [
    "async_checkpointing",
    "compiler_options",
    "keep_freed_memory",
    "on_cpu",
    "onednn_available",
    "serialise_steps",
    "single_cpu_device",
]
__getattr__, __dir__ = attach(
    __name__,
    {
        **dict.fromkeys(
            ["async_checkpointing", "on_cpu", "serialise_steps", "single_cpu_device"],
            "jaxlm.runtime.backend",
        ),
        "keep_freed_memory": "jaxlm.runtime.heap",  # before JAX starts: imports no JAX
        **dict.fromkeys(["compiler_options", "onednn_available"], "jaxlm.runtime.xla"),
    },
    ("backend", "heap", "xla"),
)

if TYPE_CHECKING:
    from jaxlm.runtime.backend import (
        async_checkpointing,
        on_cpu,
        serialise_steps,
        single_cpu_device,
    )
    from jaxlm.runtime.heap import keep_freed_memory
    from jaxlm.runtime.xla import compiler_options, onednn_available
