"""The job balancer: a queue of runs placed over GPUs (by memory need) or CPU cores.

``python -m jaxlm.jobs submit|run|status|cancel|logs`` on the command line; from Python::

    from jaxlm import jobs

    job_id = jobs.submit(jobs.Job(config="lstm:smoke", workdir="runs/a"))
    jobs.run(inventory="cpu")            # the balancer, here until the queue is empty
    print(jobs.status(job_id).state)     # or jobs.wait([job_id]) while a balancer runs elsewhere

Modules: ``queue`` (Job, the journal), ``inventory`` (devices), ``balancer`` (placement),
``outcomes`` (what an exit means), ``local`` and ``ray_backend`` (where attempts run),
``measure`` (dry runs), ``loop`` (the balancer), ``api`` (these functions).
"""

from typing import TYPE_CHECKING

from jaxlm._lazy import attach

__all__ = [
    "Balancer",
    "Device",
    "Inventory",
    "Job",
    "JobRecord",
    "Policy",
    "Retries",
    "cancel",
    "logs",
    "measure_need",
    "run",
    "status",
    "submit",
    "wait",
]
_HOME = {
    "Balancer": "jaxlm.jobs.loop",
    "Device": "jaxlm.jobs.inventory",
    "Inventory": "jaxlm.jobs.inventory",
    "Job": "jaxlm.jobs.queue",
    "JobRecord": "jaxlm.jobs.queue",
    "Policy": "jaxlm.jobs.balancer",
    "Retries": "jaxlm.jobs.outcomes",
    "cancel": "jaxlm.jobs.api",
    "logs": "jaxlm.jobs.api",
    "measure_need": "jaxlm.jobs.measure",
    "run": "jaxlm.jobs.api",
    "status": "jaxlm.jobs.api",
    "submit": "jaxlm.jobs.api",
    "wait": "jaxlm.jobs.api",
}
__getattr__, __dir__ = attach(__name__, _HOME)

if TYPE_CHECKING:
    from jaxlm.jobs.api import cancel, logs, run, status, submit, wait
    from jaxlm.jobs.balancer import Policy
    from jaxlm.jobs.inventory import Device, Inventory
    from jaxlm.jobs.loop import Balancer
    from jaxlm.jobs.measure import measure_need
    from jaxlm.jobs.outcomes import Retries
    from jaxlm.jobs.queue import Job, JobRecord
