import os
from pathlib import Path

import pytest

# Nothing in the suite may reach the internet; tests that serve a local Hub endpoint set their own environment.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Outputs of the published scBERT code (see fixtures/golden/README.md), kept in the repository so that a fresh clone
# proves parity with nothing beside it.
GOLDEN_DIR = PROJECT_ROOT / "tests" / "fixtures" / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR
