"""Conversion of published scBERT checkpoints, proven against outputs of the published code (../shared/golden)."""

import hashlib

import numpy as np
import pytest
import torch

from modeling_scbert import ScBertForMaskedLM, ScBertForSequenceClassification, ScBertModel
from modeling_scbert.cli import main
from modeling_scbert.convert_scbert_original_checkpoint import CheckpointConversionError, convert_checkpoint

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def converted(golden_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    convert_checkpoint(golden_dir / "tiny_pretrain.pth", out / "pretrain")
    convert_checkpoint(golden_dir / "tiny_finetuned.pth", out / "finetuned", labels=["B", "T", "NK", "Mono"])
    return out


def _golden(golden_dir, name):
    return torch.from_numpy(np.load(golden_dir / name))


def _one_at_a_time(model, ids):
    return torch.cat([model(ids[i : i + 1])[0] for i in range(ids.shape[0])])


@pytest.mark.parametrize("schedule", ["per_cell", "batched"])
@pytest.mark.parametrize("one_at_a_time", [True, False], ids=["one-cell-at-a-time", "batch-of-6"])
def test_golden_encodings_and_masked_expression_logits(golden_dir, converted, one_at_a_time, schedule):
    ids = _golden(golden_dir, "tiny_input_ids.npy")
    encoder = ScBertModel.from_pretrained(converted / "pretrain", attention_schedule=schedule).eval()
    mlm = ScBertForMaskedLM.from_pretrained(converted / "pretrain", attention_schedule=schedule).eval()
    assert encoder.config.attention_schedule == mlm.config.attention_schedule == schedule
    with torch.no_grad():
        encodings = _one_at_a_time(encoder, ids) if one_at_a_time else encoder(ids).last_hidden_state
        logits = _one_at_a_time(mlm, ids) if one_at_a_time else mlm(ids).logits
    expected_encodings = _golden(golden_dir, "tiny_expected_encodings.npy")
    expected_logits = _golden(golden_dir, "tiny_expected_mlm_logits.npy")
    assert (encodings - expected_encodings).abs().max() <= TOLERANCE
    assert (logits - expected_logits).abs().max() <= TOLERANCE


@pytest.mark.parametrize("schedule", ["per_cell", "batched"])
@pytest.mark.parametrize("one_at_a_time", [True, False], ids=["one-cell-at-a-time", "batch-of-6"])
def test_golden_classification_logits(golden_dir, converted, one_at_a_time, schedule):
    ids = _golden(golden_dir, "tiny_input_ids.npy")
    model = ScBertForSequenceClassification.from_pretrained(converted / "finetuned", attention_schedule=schedule)
    model.eval()
    assert model.config.attention_schedule == schedule
    assert model.config.id2label == {0: "B", 1: "T", 2: "NK", 3: "Mono"}
    with torch.no_grad():
        logits = _one_at_a_time(model, ids) if one_at_a_time else model(ids).logits
    assert (logits - _golden(golden_dir, "tiny_expected_class_logits.npy")).abs().max() <= TOLERANCE


def test_conversion_keeps_gene_table_and_random_features(golden_dir, converted):
    original = torch.load(golden_dir / "tiny_pretrain.pth", weights_only=True)["model_state_dict"]
    model = ScBertForMaskedLM.from_pretrained(converted / "pretrain")
    for i, layer in enumerate(model.scbert.encoder.layers):
        key = f"performer.net.layers.{i}.0.fn.fast_attention.projection_matrix"
        assert torch.equal(layer.attention.random_features, original[key])
    gene_table = model.scbert.embeddings.gene_embeddings.weight
    torch.testing.assert_close(gene_table.double(), original["pos_emb.emb.weight"], atol=1e-6, rtol=1e-7)
    assert torch.count_nonzero(gene_table[-1]) == 0
    config = model.config
    assert (config.num_genes, config.hidden_size, config.num_attention_heads, config.head_dim) == (100, 32, 2, 64)
    assert (config.num_random_features, config.num_hidden_layers, config.vocab_size) == (266, 2, 7)


def test_cli_convert_prints_a_report_and_writes_a_loadable_folder(golden_dir, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("alpha\nbeta\ngamma\ndelta\n")
    code = main(
        [
            "convert",
            "--checkpoint",
            str(golden_dir / "tiny_finetuned.pth"),
            "--output",
            str(tmp_path / "m"),
            "--labels",
            str(labels),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "layout: fine-tuned" in out and "2 layers, hidden 32, 2 heads x 64" in out and "parameters:" in out
    assert ScBertForSequenceClassification.from_pretrained(tmp_path / "m").config.id2label[3] == "delta"


# --- refusals -------------------------------------------------------------------------------------------------------


def _save(tmp_path, state_dict, name="bad.pth"):
    path = tmp_path / name
    torch.save({"epoch": 1, "model_state_dict": state_dict}, path)
    return path


def _published(golden_dir, name="tiny_pretrain.pth"):
    return dict(torch.load(golden_dir / name, weights_only=True)["model_state_dict"])


def test_ddp_module_prefix_is_accepted(golden_dir, tmp_path):
    state = {f"module.{k}": v for k, v in _published(golden_dir).items()}
    report = convert_checkpoint(_save(tmp_path, state), tmp_path / "out")
    assert report.layout == "pretraining"


def test_performer_pytorch_checkpoint_is_refused_by_name(tmp_path):
    performer_pytorch = pytest.importorskip("performer_pytorch")
    model = performer_pytorch.PerformerLM(
        num_tokens=7, dim=32, depth=2, heads=2, dim_head=64, max_seq_len=101, nb_features=266, attn_out_bias=False
    )
    state = dict(model.state_dict())
    state["pos_emb.emb.weight"] = torch.zeros(101, 32, dtype=torch.float64)
    with pytest.raises(CheckpointConversionError) as error:
        convert_checkpoint(_save(tmp_path, state), tmp_path / "out")
    message = str(error.value)
    assert "proj_updater" in message and "to_out.bias" in message


def test_missing_unexpected_and_misshaped_tensors_are_named(golden_dir, tmp_path):
    state = _published(golden_dir)
    del state["performer.net.layers.1.1.fn.fn.w2.bias"]
    state["performer.net.layers.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointConversionError, match=r"performer\.net\.layers\.1\.1\.fn\.fn\.w2\.bias") as error:
        convert_checkpoint(_save(tmp_path, state), tmp_path / "out")
    assert "performer.net.layers.0.extra.weight" in str(error.value)

    state = _published(golden_dir, "tiny_finetuned.pth")
    state["to_out.fc1.weight"] = torch.zeros(512, 90)
    with pytest.raises(CheckpointConversionError, match=r"to_out\.fc1\.weight: \(512, 90\), expected \(512, 101\)"):
        convert_checkpoint(_save(tmp_path, state, "ft.pth"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["performer.net.layers.0.0.fn.to_q.weight", "pos_emb.emb.weight"])
def test_a_checkpoint_with_non_finite_weights_is_refused_by_name(golden_dir, tmp_path, value, name):
    state = _published(golden_dir)
    state[name] = state[name].clone()
    state[name].view(-1)[3] = value
    with pytest.raises(CheckpointConversionError, match="NaN or infinite") as error:
        convert_checkpoint(_save(tmp_path, state), tmp_path / "out")
    assert f"{name} (1 of" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_other_bad_inputs(golden_dir, tmp_path, capsys):
    with pytest.raises(CheckpointConversionError, match="not found"):
        convert_checkpoint(tmp_path / "nope.pth", tmp_path / "out")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointConversionError, match="Could not read"):
        convert_checkpoint(garbage, tmp_path / "out")
    with pytest.raises(
        CheckpointConversionError, match="3 label names were given but the checkpoint's classifier has 4"
    ):
        convert_checkpoint(golden_dir / "tiny_finetuned.pth", tmp_path / "out", labels=["a", "b", "c"])
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_checkpoint(golden_dir / "tiny_pretrain.pth", tmp_path / "exists")
    code = main(["convert", "--checkpoint", str(garbage), "--output", str(tmp_path / "out")])
    assert code == 2
    assert "scbert convert: error: Could not read" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_writes_the_tokenizer_from_a_gene_list_or_a_reference_h5ad(golden_dir, tmp_path, capsys):
    import anndata as ad

    from modeling_scbert import ScBertTokenizer

    genes = [f"GENE{i}" for i in range(100)]
    (tmp_path / "genes.txt").write_text("\n".join(genes) + "\n")
    code = main(
        [
            "convert",
            "--checkpoint",
            str(golden_dir / "tiny_pretrain.pth"),
            "--output",
            str(tmp_path / "a"),
            "--genes",
            str(tmp_path / "genes.txt"),
        ]
    )
    assert code == 0
    tokenizer = ScBertTokenizer.from_pretrained(tmp_path / "a")
    assert list(tokenizer.genes) == genes
    assert f"panel sha256 {tokenizer.panel_hash}" in capsys.readouterr().out
    # With its panel, a converted folder carries a card that states its provenance.
    card = (tmp_path / "a" / "README.md").read_text()
    source_sha = hashlib.sha256((golden_dir / "tiny_pretrain.pth").read_bytes()).hexdigest()
    assert source_sha in card and tokenizer.panel_hash in card

    reference = ad.AnnData(np.zeros((2, 100), dtype=np.float32))
    reference.var_names = genes[::-1]
    reference.write_h5ad(tmp_path / "reference.h5ad")
    code = main(
        [
            "convert",
            "--checkpoint",
            str(golden_dir / "tiny_pretrain.pth"),
            "--output",
            str(tmp_path / "b"),
            "--reference-h5ad",
            str(tmp_path / "reference.h5ad"),
        ]
    )
    assert code == 0
    assert list(ScBertTokenizer.from_pretrained(tmp_path / "b").genes) == genes[::-1]

    (tmp_path / "short.txt").write_text("\n".join(genes[:90]) + "\n")
    code = main(
        [
            "convert",
            "--checkpoint",
            str(golden_dir / "tiny_pretrain.pth"),
            "--output",
            str(tmp_path / "c"),
            "--genes",
            str(tmp_path / "short.txt"),
        ]
    )
    assert code == 2
    assert "The model's panel has 100 genes but the tokenizer's has 90" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
