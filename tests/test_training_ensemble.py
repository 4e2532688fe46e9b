"""finetune_ensemble: one fine-tuning per seed in worker processes, members that differ, load and annotate together."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

from modeling_scbert import ScBertForSequenceClassification
from modeling_scbert.annotation.annotate import annotate
from modeling_scbert.training.ensemble import ensemble_processes, finetune_ensemble, member_dir

TINY = {
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "head_dim": 8,
    "intermediate_size": 32,
    "num_random_features": 8,
    "classifier_hidden_sizes": [16],
}
CELL_TYPES = ["B", "T", "NK"]


def make_cells(n_cells: int = 36, n_genes: int = 12, seed: int = 0) -> ad.AnnData:
    """Counts where each type expresses its own block of genes."""
    rng = np.random.default_rng(seed)
    types = np.array([CELL_TYPES[i % 3] for i in range(n_cells)])
    means = np.full((n_cells, n_genes), 0.05)
    for k, name in enumerate(CELL_TYPES):
        means[types == name, 4 * k : 4 * k + 4] = 12.0
    return ad.AnnData(
        X=sp.csr_matrix(rng.poisson(means).astype(np.float32)),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical(types, categories=CELL_TYPES)}, index=[f"cell{i}" for i in range(n_cells)]
        ),
        var=pd.DataFrame(index=[f"GENE{j}" for j in range(n_genes)]),
    )


def template(tmp_path, **overrides) -> TrainingArguments:
    options = {
        "output_dir": str(tmp_path / "template"),
        "per_device_train_batch_size": 8,
        "learning_rate": 3e-3,
        "max_steps": 3,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 123,
        "dataloader_pin_memory": False,
    }
    return TrainingArguments(**{**options, **overrides})


class FailOnSeed(TrainerCallback):
    """Raises when training starts in the run whose seed is ``seed`` (importable, so spawned workers can load it)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_begin(self, args, state, control, **kwargs):
        if args.seed == self.seed:
            raise ValueError(f"deliberate failure for seed {self.seed}")


@pytest.mark.slow
def test_members_train_in_two_processes_differ_load_and_annotate_together(tmp_path):
    cells = make_cells()
    args = template(tmp_path)
    before = args.to_dict()
    paths = finetune_ensemble(
        cells,
        seeds=[0, 1],
        output_dir=tmp_path / "ensemble",
        training_args=args,
        processes=2,
        label_key="cell_type",
        config_overrides=TINY,
        encode_kwargs={"cache_dir": str(tmp_path / "cache")},
    )
    assert paths == [str(member_dir(tmp_path / "ensemble", 0)), str(member_dir(tmp_path / "ensemble", 1))]
    assert args.to_dict() == before  # the template is the caller's: untouched

    models = [ScBertForSequenceClassification.from_pretrained(path) for path in paths]
    assert [model.config.id2label for model in models] == [dict(enumerate(CELL_TYPES))] * 2
    # Each member ran with its own seed, so their weights differ (a new model drawn from that seed).
    weights = [load_file(f"{path}/model.safetensors") for path in paths]
    assert set(weights[0]) == set(weights[1])
    assert any(not torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    for path, seed in zip(paths, (0, 1)):
        state = torch.load(f"{path}/training_args.bin", weights_only=False)
        assert state.seed == seed and state.output_dir == path

    # Together they annotate with the average of their probabilities.
    query = make_cells(n_cells=12, seed=1)
    alone = [annotate(query, path, copy=True, progress=False, return_probabilities=True) for path in paths]
    together = annotate(query, paths, copy=True, progress=False, return_probabilities=True)
    expected = np.mean([a.obsm["scbert_probabilities"] for a in alone], axis=0)
    np.testing.assert_allclose(together.obsm["scbert_probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert list(together.uns["scbert"]["params"]["model"]) == paths


@pytest.mark.slow
def test_a_failing_member_is_named_and_the_other_is_kept(tmp_path):
    with pytest.raises(RuntimeError, match=r"1 of 2 ensemble members failed.*seed 1: ValueError: deliberate failure"):
        finetune_ensemble(
            make_cells(),
            seeds=[0, 1],
            output_dir=tmp_path / "ensemble",
            training_args=template(tmp_path),
            processes=2,
            label_key="cell_type",
            config_overrides=TINY,
            callbacks=[FailOnSeed(1)],
            encode_kwargs={"cache_dir": str(tmp_path / "cache")},
        )
    assert (member_dir(tmp_path / "ensemble", 0) / "model.safetensors").is_file()
    assert not (member_dir(tmp_path / "ensemble", 1) / "model.safetensors").exists()


def test_one_process_trains_the_members_in_turn_from_copies_of_a_model_object(tmp_path):
    from modeling_scbert import ScBertConfig
    from tokenization import ScBertTokenizer

    cells = make_cells(n_cells=24)
    tokenizer = ScBertTokenizer(list(cells.var_names))
    config = ScBertConfig(num_genes=tokenizer.num_genes, gene_embedding_type="learned", num_labels=3, **TINY)
    torch.manual_seed(0)
    model = ScBertForSequenceClassification(config)
    start = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    paths = finetune_ensemble(
        cells,
        seeds=[3, 4],
        output_dir=tmp_path / "ensemble",
        training_args=template(tmp_path, max_steps=2),
        processes=1,
        model=model,
        tokenizer=tokenizer,
        label_key="cell_type",
        encode_kwargs={"cache_dir": str(tmp_path / "cache")},
    )
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["seed_3", "seed_4"]
    # The caller's model was copied for each member, never trained itself.
    assert all(torch.equal(start[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize(
    ("seeds", "error", "message"),
    [
        ([], ValueError, "seeds is empty"),
        ([0, 0], ValueError, r"seeds \[0\] appear more than once"),
        ([0, 1.5], TypeError, "whole numbers"),
        (3, TypeError, "a list of whole numbers"),
    ],
)
def test_bad_seeds_are_refused_before_training(tmp_path, seeds, error, message):
    with pytest.raises(error, match=message):
        finetune_ensemble(make_cells(), seeds=seeds, output_dir=tmp_path, label_key="cell_type")


def test_processes_split_the_cores_and_never_exceed_the_members(monkeypatch):
    monkeypatch.setattr("modeling_scbert.training.ensemble.available_cores", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ensemble_processes(None, 3) == (3, 2)
    assert ensemble_processes(2, 5) == (2, 4)
    assert ensemble_processes(16, 2) == (2, 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ensemble_processes(None, 3) == (1, 8)
    with pytest.raises(ValueError, match="at least 1"):
        ensemble_processes(0, 3)


def test_members_read_the_labels_by_the_one_rule_and_its_options(tmp_path):
    cells = make_cells()
    labels = cells.obs["cell_type"].astype(str).to_numpy()
    labels[0], labels[3], labels[1] = "b", "nan", "T "  # a case variant, a missing label, a trailing space
    cells.obs["cell_type"] = labels
    run = {"label_key": "cell_type", "preset": "full", "config_overrides": TINY, "processes": 1}
    run["encode_kwargs"] = {"cache_dir": str(tmp_path / "cache")}
    with pytest.raises(RuntimeError, match="no label") as error:
        finetune_ensemble(cells, seeds=[0], output_dir=tmp_path / "refused", training_args=template(tmp_path), **run)
    assert "drop_missing_labels=True" in str(error.value)
    folders = finetune_ensemble(
        cells,
        seeds=[0],
        output_dir=tmp_path / "ensemble",
        training_args=template(tmp_path),
        drop_missing_labels=True,
        merge_label_variants=True,
        **run,
    )
    member = ScBertForSequenceClassification.from_pretrained(folders[0])
    assert member.config.id2label == {0: "B", 1: "NK", 2: "T"}
