"""Prefect flows: `generate` (triggered; also what the CLI runs) and `evaluate-variants` (scheduled).

Every generation, from the CLI, a deployment or an evaluation, is a Prefect flow run and an MLflow run.
"""
