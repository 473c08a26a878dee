"""One tracked generation in this process: generate -> post-process -> track into the job's open MLflow run.

The flow's own process runs it, or a warm worker runs it on a flow's behalf (`tasks.warm`); which one is
decided in `tasks.dispatch`. Either way only the small record leaves the process that generated (frames
never do).
"""

from tasks.generate import generate_video
from tasks.postprocess import postprocess_output
from tasks.track import GenerationRecord, Job, log_generation


def run_generation(job: Job) -> GenerationRecord:
    """The three steps in this process."""
    generation = generate_video(job.request, job.settings)
    post = postprocess_output(generation, job.sidecar)
    try:
        return log_generation(job, generation, post)
    finally:
        post.close()  # the staged copies of an uploaded output, once tracked
