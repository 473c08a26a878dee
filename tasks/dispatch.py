"""Where a generation runs: in the flow's process, or on a warm worker when the settings say so.

The one place that decides; the flows call `generate_tracked` for every request. A generation that does not
finish leaves its MLflow run FAILED with the error, or KILLED (`interrupted`) when its process was stopped
(Ctrl-C, SIGTERM).
"""

from tasks.run import run_generation
from tasks.track import GenerationRecord, Job, end_run, fail_run
from tasks.warm import generate_on_warm_worker


def generate_tracked(job: Job) -> GenerationRecord:
    """`run_generation` here, or on a warm worker; the run records a failure."""
    run = generate_on_warm_worker if job.settings.warm_workers else run_generation
    try:
        return run(job)
    except Exception as error:
        fail_run(job.settings, job.run_id, error)
        raise
    except BaseException as error:  # Ctrl-C, SIGTERM, a stopped worker: no Prefect task now, just the record
        end_run(job.settings, job.run_id, error)
        raise
