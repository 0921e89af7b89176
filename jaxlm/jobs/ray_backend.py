"""The same queue dispatched as Ray tasks (``python -m jaxlm.jobs run --backend=ray``).

``pip install -e ".[ray]"``. A GPU job asks Ray for a fraction of a GPU equal to its memory
fraction (``num_gpus=0.275``), so Ray packs jobs onto GPUs by memory as the local balancer
does, and its process gets that fraction as ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (Ray sets
``CUDA_VISIBLE_DEVICES``). A job of ``gpus=k > 1``, one of unknown need, or one retried alone
takes whole GPUs. Turning needs into fractions takes the GPUs' memory: ``gpu_memory``, or this
machine's GPUs. On a cluster without GPUs, jobs ask for ``num_cpus`` (their cores).

Jobs are dispatched while the cluster has room for them (the resources asked of it by running
jobs stay within its totals); the rest wait in our queue, not Ray's. Jobs and the queue folder
must be on storage every node sees. Ray tasks die with their driver: when a balancer restarts,
the attempts it had running are started again and resume from their workdirs (their processes
got SIGTERM, checkpointed and exited 143 meanwhile).
"""

from __future__ import annotations

import sys
from pathlib import Path

from jaxlm.errors import JobError
from jaxlm.jobs import _task
from jaxlm.jobs.balancer import Placement, Policy, Running, Unplaceable, memory_fraction
from jaxlm.jobs.inventory import Device, Inventory
from jaxlm.jobs.local import Attempt, open_attempt, with_jaxlm_path
from jaxlm.jobs.queue import JobRecord, format_size


class RayBackend:
    """Runs attempts as Ray tasks.

    Args:
      folder: the queue folder.
      address: the cluster (``"auto"``, ``"ray://host:10001"``); None: the Ray instance this
        process already joined, or a new local one.
      policy: the sharing rules (headroom, largest fraction, cores per job).
      inventory: this machine's devices (its GPUs' memory, when ``gpu_memory`` is None).
      gpu_memory: bytes of each GPU of the cluster.

    Raises:
      JobError: Ray is not installed, or the cluster has GPUs of unknown memory.
    """

    name = "ray"
    kind = "ray"

    def __init__(
        self,
        folder: Path,
        address: str | None,
        policy: Policy,
        inventory: Inventory | None = None,
        gpu_memory: int | None = None,
    ):
        try:
            import ray
        except ImportError:
            raise JobError('backend ray: pip install -e ".[ray]"') from None
        self.ray = ray
        self.folder, self.policy = folder, policy
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        ray.cloudpickle.register_pickle_by_value(_task)
        self._remote = ray.remote(max_retries=0)(_task.run_attempt)
        totals = ray.cluster_resources()
        self.gpus, self.cpus = float(totals.get("GPU", 0)), float(totals.get("CPU", 0))
        if gpu_memory is None and inventory is not None and inventory.kind == "gpu":
            gpu_memory = min(d.memory_total for d in inventory.devices())
        if self.gpus and gpu_memory is None:
            raise JobError("backend ray: the cluster has GPUs; give their memory (--gpu_memory)")
        self.gpu_memory = gpu_memory
        self._asked: dict[str, dict[str, float]] = {}  # job id -> resources of its attempt

    def devices(self) -> list[Device]:
        """None here: Ray places the tasks."""
        return []

    def place(
        self,
        record: JobRecord,
        devices: list[Device],
        running: list[Running],
        blocked: frozenset[str],
    ) -> Placement | None:
        """What the record's next attempt asks of Ray, or None while the cluster is full."""
        del devices, running, blocked
        job = record.job
        if self.gpus:
            placement = self._gpu_placement(record)
            key, total = "num_gpus", self.gpus
        else:
            cores = job.cores or self.policy.cores_per_job
            threads = str(cores)
            env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            env["JAX_PLATFORMS"] = "cpu"
            placement = Placement(("ray",), None, 0, (), record.alone, env, {"num_cpus": cores})
            key, total = "num_cpus", self.cpus
        wanted = placement.resources[key]
        if wanted > total:
            raise Unplaceable(f"it asks for {key}={wanted}; the Ray cluster has {total:g}")
        asked = sum(r.get(key, 0.0) for r in self._asked.values())
        return placement if asked + wanted <= total + 1e-9 else None

    def _gpu_placement(self, record: JobRecord) -> Placement:
        job, policy = record.job, self.policy
        assert self.gpu_memory is not None
        gpus = job.gpus or policy.gpus_per_job
        whole = record.alone or record.need is None or gpus > 1
        if record.need is None or record.alone:
            fraction = policy.max_fraction
        else:
            fraction = memory_fraction(
                int(record.need * record.memory_scale), self.gpu_memory, policy.headroom
            )
            if fraction > policy.max_fraction:
                raise Unplaceable(
                    f"it needs {format_size(record.need * record.memory_scale)} per GPU; a GPU "
                    f"of the cluster holds {format_size(self.gpu_memory * policy.max_fraction)}"
                )
        resources = {"num_gpus": float(gpus) if whole else fraction}
        resources["num_cpus"] = float(job.cores or 0)
        env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{fraction:.3f}"}
        return Placement(("ray",), fraction, 0, (), record.alone, env, resources)

    def prepare(self, record: JobRecord, number: int, placement: Placement) -> Attempt:
        """Opens the attempt's part of the log."""
        return open_attempt(self.folder, record, number, placement)

    def launch(self, record: JobRecord, attempt: Attempt) -> None:
        """Submits the attempt as a Ray task."""
        job = record.job
        env = {**job.env, **attempt.placement.env}
        env["JAXLM_JOB_ID"], env["JAXLM_JOB_ATTEMPT"] = record.id, str(attempt.number)
        if job.config is not None:
            env["PYTHONPATH"] = with_jaxlm_path({})["PYTHONPATH"]
        resources = attempt.placement.resources
        task = self._remote.options(**resources)
        attempt.handle = task.remote(job.argv(sys.executable), job.cwd, env, str(attempt.log))
        self._asked[record.id] = resources

    def adopt(self, record: JobRecord) -> Attempt:
        """A task of a previous driver cannot be adopted: the attempt counts as lost."""
        info = record.placement or {"devices": ["ray"]}
        log = self.folder / "logs" / f"{record.id}.log"
        return Attempt(
            record.id,
            record.attempt,
            Placement.from_dict(info),
            log,
            int(info.get("log_offset", 0)),
            record.started or 0.0,
        )

    def poll(self, attempt: Attempt) -> tuple[bool, int | None]:
        """``(ended, code)`` of the attempt's task (code None: the task was lost)."""
        ray = self.ray
        if attempt.handle is None:
            return True, None
        ready, _ = ray.wait([attempt.handle], timeout=0)
        if not ready:
            return False, None
        self._asked.pop(attempt.id, None)
        try:
            return True, int(ray.get(attempt.handle))
        except ray.exceptions.TaskCancelledError:
            return True, 143
        except ray.exceptions.RayError as e:
            with open(attempt.log, "a") as f:
                f.write(f"error: the Ray task failed: {str(e).splitlines()[0]}\n")
            return True, None

    def pid(self, attempt: Attempt) -> int | None:
        """Unknown: the process runs on a Ray worker."""
        return None

    def terminate(self, attempt: Attempt, force: bool = False) -> None:
        """Cancels the task (its command gets SIGTERM; ``force``: the worker is killed)."""
        if attempt.handle is not None:
            self.ray.cancel(attempt.handle, force=force)

    def close(self) -> None:
        """Leaves the Ray instance this backend started."""
        if self._started:
            self.ray.shutdown()
