"""Seed-compatible entry point: `python scripts/diffusers_inference.py --help`.

A thin wrapper over `cosmos_pipeline.cli`, kept so commands written for NVIDIA's diffusers
script run unchanged.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flows.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
