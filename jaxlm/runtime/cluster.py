"""Which launcher started this process as one of several, read from the environment alone (no
JAX: the command line asks before it decides whether to start it)."""

from __future__ import annotations

from collections.abc import Mapping

# Environment variables by which JAX's own cluster detection (``jax.distributed.initialize()``
# without arguments) recognises a job of several processes: a job step that srun started with
# more than one task, and mpirun's world.
_CLUSTERS = {"SLURM": ("SLURM_STEP_ID", "SLURM_NTASKS"), "Open MPI": (None, "OMPI_COMM_WORLD_SIZE")}


def detected_cluster(env: Mapping[str, str]) -> str | None:
    """The cluster whose launcher started this process as one of several, from its environment.

    Args:
      env: the environment (``os.environ``).

    Returns:
      ``"SLURM"`` or ``"Open MPI"``, or None (one process, or no launcher JAX knows).

    Example:
      >>> detected_cluster({"SLURM_STEP_ID": "0", "SLURM_NTASKS": "4"})
      'SLURM'
      >>> detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
      True
    """
    for name, (marker, size) in _CLUSTERS.items():
        count = env.get(size, "1")
        if (marker is None or marker in env) and count.isdigit() and int(count) > 1:
            return name
    return None
