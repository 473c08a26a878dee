"""Prefect tasks: thin, typed wrappers over the core (`cosmos_pipeline`), plus the MLflow and Great
Expectations plumbing the core must not import. Flows in `flows/` chain them:
resolve -> validate -> generate -> postprocess -> track."""
