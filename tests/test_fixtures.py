"""The golden vectors kept in tests/fixtures are the published code's outputs handed over in ../shared/golden."""

import hashlib

import pytest
from conftest import GOLDEN_DIR, PROJECT_ROOT

HANDED_OVER = PROJECT_ROOT.parent / "shared" / "golden"


def _digests(folder):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_golden_fixtures_are_complete():
    names = set(_digests(GOLDEN_DIR))
    assert {"README.md", "tiny_pretrain.pth", "tiny_finetuned.pth", "tokenizer_input_ids.npy"} <= names


def test_golden_fixtures_equal_the_handed_over_vectors():
    if not HANDED_OVER.is_dir():
        pytest.skip(f"{HANDED_OVER} is not beside this checkout; the copy in tests/fixtures is used as it is")
    assert _digests(GOLDEN_DIR) == _digests(HANDED_OVER)
