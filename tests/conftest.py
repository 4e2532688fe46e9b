import os
from pathlib import Path

import pytest

# Nothing in the suite may reach the internet; tests that serve a local Hub endpoint set their own environment.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = PROJECT_ROOT.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN_DIR.is_dir():
        pytest.skip(f"golden reference vectors not found at {GOLDEN_DIR} (they live in ../shared/golden)")
    return GOLDEN_DIR
