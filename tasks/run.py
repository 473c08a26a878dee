"""One tracked generation: generate -> post-process -> track into the job's open MLflow run, here or on a
warm worker, decided in `generate_tracked` only.

Either way only the small record leaves the process that generated (frames never do), and a generation
that does not finish leaves its run FAILED with the error, or KILLED (`interrupted`) when its process was
stopped (Ctrl-C, SIGTERM).
"""

from tasks.generate import generate_video
from tasks.postprocess import postprocess_output
from tasks.track import GenerationRecord, Job, end_run, fail_run, log_generation


def run_generation(job: Job) -> GenerationRecord:
    """The three steps in this process: the flow's, or a warm worker's on behalf of a flow."""
    generation = generate_video(job.request, job.settings)
    post = postprocess_output(generation, job.sidecar)
    try:
        return log_generation(job, generation, post)
    finally:
        post.close()  # the staged copies of an uploaded output, once tracked


def generate_tracked(job: Job) -> GenerationRecord:
    """`run_generation` here, or on a warm worker when the settings say so; the run records a failure."""
    from tasks.warm import generate_on_warm_worker

    run = generate_on_warm_worker if job.settings.warm_workers else run_generation
    try:
        return run(job)
    except Exception as error:
        fail_run(job.settings, job.run_id, error)
        raise
    except BaseException as error:  # Ctrl-C, SIGTERM, a stopped worker: no Prefect task now, just the record
        end_run(job.settings, job.run_id, error)
        raise
