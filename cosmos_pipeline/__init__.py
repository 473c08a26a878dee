"""Cosmos World Pipeline core: requests, bundles, media, loading, generation. No Prefect or MLflow here."""

__version__ = "0.1.0"
