import math

import pytest

from modeling_scbert import ScBertConfig


def test_defaults_are_the_published_model():
    config = ScBertConfig()
    assert (config.vocab_size, config.num_genes, config.sequence_length) == (7, 16906, 16907)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.head_dim) == (
        200,
        6,
        10,
        64,
    )
    assert config.intermediate_size == 800
    assert config.num_random_features == int(64 * math.log(64)) == 266
    assert (config.hidden_act, config.layer_norm_eps, config.kernel_epsilon) == ("gelu", 1e-5, 1e-4)
    assert (config.feature_redraw_interval, config.mask_token_id, config.highest_expression_bin) == (1000, 6, 5)
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == config.embedding_dropout_prob == 0.0
    assert (config.gene_embedding_type, config.classifier_type, config.classifier_hidden_sizes) == (
        "frozen",
        "conv",
        [512, 128],
    )


def test_random_features_follow_head_dim():
    assert ScBertConfig(head_dim=16).num_random_features == int(16 * math.log(16))
    assert ScBertConfig(head_dim=16, num_random_features=40).num_random_features == 40


def test_round_trip(tmp_path):
    config = ScBertConfig(
        num_genes=12, hidden_size=8, classifier_type="pooled", classifier_hidden_sizes=[4], num_labels=3
    )
    config.save_pretrained(tmp_path)
    loaded = ScBertConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


@pytest.mark.parametrize("schedule", ["per_cell", "batched", None])
def test_attention_schedule_is_saved_and_loaded(schedule, tmp_path):
    ScBertConfig(num_genes=20, attention_schedule=schedule).save_pretrained(tmp_path)
    assert ScBertConfig.from_pretrained(tmp_path).attention_schedule == schedule


@pytest.mark.parametrize(
    ("kwargs", "quoted"),
    [
        ({"mask_token_id": 7}, ["(7)", "vocab_size (7)"]),
        ({"hidden_size": 0}, ["hidden_size", "0"]),
        ({"num_genes": -3}, ["num_genes", "-3"]),
        ({"gene_embedding_type": "gene2vec"}, ["'gene2vec'", "frozen"]),
        ({"classifier_type": "cls"}, ["'cls'", "pooled"]),
        ({"hidden_act": "swishy"}, ["'swishy'"]),
        ({"classifier_hidden_sizes": [512, 0]}, ["[512, 0]"]),
        ({"hidden_dropout_prob": 1.5}, ["hidden_dropout_prob", "1.5"]),
        ({"classifier_input_dropout": -0.1}, ["classifier_input_dropout", "-0.1"]),
        ({"feature_redraw_interval": -1}, ["-1"]),
        ({"attention_chunk_size": 0}, ["attention_chunk_size", "0"]),
        ({"attention_schedule": "batch"}, ["attention_schedule", "'batch'", "'per_cell'", "'batched'"]),
    ],
)
def test_inconsistent_values_are_refused_with_the_values(kwargs, quoted):
    with pytest.raises(ValueError) as error:
        ScBertConfig(**kwargs)
    for text in quoted:
        assert text in str(error.value)
