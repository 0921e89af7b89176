"""The memory need from a job's dry run (its command with --dry_run), or as it states it."""

from __future__ import annotations

import pytest

from jaxlm.errors import JobError
from jaxlm.jobs import Job, measure_need
from jaxlm.jobs.measure import dry_run_command, parse_dry_run
from tests.jobs.fakes import GiB, fake


def test_the_need_is_the_dry_runs_peak_per_device():
    assert measure_need(Job(command=fake("--dry_run_bytes", 3 * GiB), dry_run=True)) == 3 * GiB
    assert measure_need(Job(command=("false",), memory_bytes=GiB)) == GiB  # stated: not run
    text = 'DRY_RUN {"peak_bytes": 5}\nDRY_RUN not json\nDRY_RUN {"peak_bytes": 7, "devices": 2}'
    assert parse_dry_run(text) == 7


def test_a_dry_run_without_its_line_is_one_error_with_its_output():
    with pytest.raises(JobError, match="printed no DRY_RUN line; give the job memory_bytes"):
        measure_need(Job(command=fake("--exit", 1)))


def test_a_config_jobs_dry_run_is_its_training_command_with_the_flag():
    job = Job(config="lstm:smoke", workdir="/w", overrides={"train.num_steps": 5})
    assert dry_run_command(job, "py") == [
        "py",
        "-m",
        "jaxlm.train",
        "--config=lstm:smoke",
        "--workdir=/w",
        "--config.train.num_steps=5",
        "--dry_run",
    ]
    assert job.measured() and not Job(command=("x",)).measured()
