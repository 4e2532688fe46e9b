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


def save_tiny_annotator(
    path, genes, classes=("B", "T"), *, seed: int = 0, initializer_range: float = 0.02, **tokenizer_kwargs
):
    """A tiny fine-tuned-shaped classifier (pooled head) and its tokenizer over ``genes``, saved in one folder."""
    import torch

    from modeling_scbert import ScBertConfig, ScBertForSequenceClassification
    from tokenization import ScBertTokenizer

    torch.manual_seed(seed)
    config = ScBertConfig(
        num_genes=len(genes),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        head_dim=8,
        intermediate_size=32,
        num_random_features=8,
        gene_embedding_type="learned",
        classifier_type="pooled",
        classifier_hidden_sizes=[16],
        initializer_range=initializer_range,
        id2label=dict(enumerate(classes)),
        label2id={name: i for i, name in enumerate(classes)},
    )
    ScBertForSequenceClassification(config).save_pretrained(path)
    ScBertTokenizer(list(genes), **tokenizer_kwargs).save_pretrained(path)
    return path
