"""Which parameters fine-tuning trains (the presets), checked through a real run: the published preset with gradient
checkpointing trains exactly as without it (the trainable layer moves, the frozen one does not)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

from modeling_scbert import ScBertConfig, ScBertForMaskedLM, finetune
from tokenization import ScBertTokenizer

GENES = [f"GENE{j}" for j in range(24)]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    config = ScBertConfig(
        num_genes=len(GENES),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=8,
        intermediate_size=32,
        num_random_features=8,
        gene_embedding_type="learned",
    )
    ScBertForMaskedLM(config).save_pretrained(folder)
    ScBertTokenizer(GENES).save_pretrained(folder)
    return folder


def _cells(n_cells=48):
    rng = np.random.default_rng(2)
    counts = rng.poisson(3.0, size=(n_cells, len(GENES))).astype(np.float32)
    labels = np.array(["B", "T", "NK"])[np.arange(n_cells) % 3]
    obs = pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=GENES))


def _finetuned(pretrained, tmp_path, *, checkpointing: bool):
    args = TrainingArguments(
        str(tmp_path / f"gc_{checkpointing}"),
        num_train_epochs=1,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        learning_rate=1e-2,
        warmup_steps=0.1,
        gradient_checkpointing=checkpointing,
    )
    finetune(
        _cells(),
        label_key="cell_type",
        model=str(pretrained),
        training_args=args,
        preset="published",
        encode_kwargs={"cache_dir": str(tmp_path / "cache")},
    )
    return load_file(str(tmp_path / f"gc_{checkpointing}" / "model.safetensors"))


def test_the_published_preset_trains_the_same_with_gradient_checkpointing(pretrained, tmp_path):
    start = load_file(str(pretrained / "model.safetensors"))
    plain = _finetuned(pretrained, tmp_path, checkpointing=False)
    checkpointed = _finetuned(pretrained, tmp_path, checkpointing=True)

    def moved(weights, prefix):
        return max(
            float((weights[k] - start[k]).abs().max())
            for k in start
            if k.startswith(prefix) and start[k].is_floating_point() and "random_features" not in k
        )

    assert moved(checkpointed, "scbert.encoder.layers.0.") > 1e-4  # the published preset's trainable layer
    assert moved(checkpointed, "scbert.encoder.layers.1.") == 0  # frozen
    gap = max(float((checkpointed[k] - plain[k]).abs().max()) for k in plain if plain[k].is_floating_point())
    assert gap < 1e-5
