"""The queue as Ray tasks on a local Ray instance with two fake 16 GiB GPUs: fractional
``num_gpus`` equal to each job's memory fraction, which its process gets too, and a preempted
job resumed. Skipped when Ray is not installed (pip install -e ".[ray]")."""

from __future__ import annotations

import pytest

from jaxlm.jobs import Balancer, Job, submit
from tests.jobs.fakes import GiB, attempts, fake

ray = pytest.importorskip("ray")
# Ray starts its processes with fork from a process where JAX runs (the suite's conftest).
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_jobs_run_as_ray_tasks_with_fractional_gpus(cluster, tmp_path):
    queue, log, workdir = tmp_path / "q", tmp_path / "attempts.jsonl", tmp_path / "run"
    sizes = [4, 6, 8, 5]
    ids = [
        submit(
            Job(command=fake("--record", log, "--sleep", 0.5), memory_bytes=s * GiB), queue=queue
        )
        for s in sizes
    ]
    resumed = submit(
        Job(command=fake("--record", log, "--preempt_once", workdir), memory_bytes=GiB), queue=queue
    )
    balancer = Balancer(queue, "cpu", backend="ray", gpu_memory=16 * GiB, poll=0.05, log=None)
    records = balancer.run(until_done=True, timeout=120)
    assert all(r.state == "finished" for r in records.values()), records
    assert records[resumed].history == ["preempted", "finished"]
    given = {r["job"]: r for r in attempts(log) if r["event"] == "start"}
    for job_id, size in zip(ids, sizes, strict=True):
        fraction = records[job_id].placement["fraction"]
        assert records[job_id].placement["resources"]["num_gpus"] == fraction
        assert given[job_id]["fraction"] == f"{fraction:.3f}"
        assert abs(fraction - size * 1.1 / 16) < 0.001
        assert given[job_id]["cuda"] in ("0", "1")  # Ray chose the GPU
    assert "resumed from step 5" in (queue / f"logs/{resumed}.log").read_text()
