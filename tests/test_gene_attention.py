"""gene_attention: the FAVOR+ attention matrix's column means, computed without forming the matrix."""

import pytest
import torch

from modeling_scbert import ScBertConfig, ScBertForSequenceClassification, ScBertModel, gene_attention
from modeling_scbert.modeling_scbert import softmax_kernel_features

NUM_GENES = 40


def build(seed: int = 0, **overrides) -> ScBertForSequenceClassification:
    torch.manual_seed(seed)
    values = {
        "num_genes": NUM_GENES,
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 3,
        "head_dim": 8,
        "intermediate_size": 64,
        "num_random_features": 24,
        "gene_embedding_type": "learned",
        "classifier_hidden_sizes": [16],
        "num_labels": 3,
        "initializer_range": 0.3,  # spread-out attention, so the scores differ between tokens
    }
    values.update(overrides)
    return ScBertForSequenceClassification(ScBertConfig(**values)).eval()


def input_ids(batch: int = 3, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, 6, (batch, NUM_GENES + 1), generator=torch.Generator().manual_seed(seed))
    ids[:, -1] = 0
    return ids


def explicit_column_means(model, ids, layer, mask=None) -> torch.Tensor:
    """Form each head's FAVOR+ attention matrix from softmax_kernel_features, normalise its rows, average its columns
    over the (unmasked) queries, then over the heads."""
    with torch.no_grad():
        hidden = model.scbert(ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
        block = model.scbert.encoder.layers[layer]
        attention = block.attention
        normed = block.attention_norm(hidden)
        q, k = (
            projection(normed).unflatten(-1, (attention.num_heads, attention.head_dim)).transpose(1, 2)
            for projection in (attention.query, attention.key)
        )
        epsilon = model.config.kernel_epsilon
        bool_mask = None if mask is None else mask.bool()
        phi_q = softmax_kernel_features(q.double(), attention.random_features.double(), is_query=True, epsilon=epsilon)
        phi_k = softmax_kernel_features(
            k.double(), attention.random_features.double(), is_query=False, epsilon=epsilon, mask=bool_mask
        )
        matrix = phi_q @ phi_k.transpose(-1, -2)  # (batch, heads, queries, keys)
        matrix = matrix / matrix.sum(dim=-1, keepdim=True)
        if bool_mask is None:
            columns = matrix.mean(dim=-2)
        else:
            weights = bool_mask[:, None, :, None].double()
            columns = (matrix * weights).sum(dim=-2) / weights.sum(dim=-2)
        return columns.mean(dim=1).float()


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_gene_attention_equals_the_explicit_matrix_column_means(layer):
    model = build()
    ids = input_ids()
    expected = explicit_column_means(model, ids, layer % 3)
    scores = gene_attention(model, ids, layer=layer, chunk_size=7)  # chunks that do not divide the length
    assert scores.dtype == torch.float32 and scores.shape == ids.shape
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    # Not a uniform answer: the tokens are attended to differently, and cells differ.
    assert (scores.max(dim=1).values / scores.min(dim=1).values > 1.2).all()
    assert not torch.allclose(scores[0], scores[1])


def test_gene_attention_with_a_mask_equals_the_masked_matrix():
    model = build(seed=1)
    ids = input_ids(seed=1)
    mask = torch.ones_like(ids)
    mask[0, 25:] = 0  # padding at the end
    mask[1, [2, 9, 30]] = 0  # holes
    expected = explicit_column_means(model, ids, 2, mask)
    scores = gene_attention(model, ids, layer=2, attention_mask=mask, chunk_size=16)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert torch.all(scores[mask == 0] == 0)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    # A masked cell's scores depend only on its unmasked tokens: changing a padded token changes nothing.
    changed = ids.clone()
    changed[0, 30] = (changed[0, 30] + 1) % 6
    torch.testing.assert_close(gene_attention(model, changed, layer=2, attention_mask=mask), scores)


def test_gene_attention_does_not_depend_on_chunking_batching_or_the_head():
    model = build(seed=2)
    ids = input_ids(4, seed=2)
    reference = gene_attention(model, ids)
    torch.testing.assert_close(gene_attention(model, ids, chunk_size=1), reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gene_attention(model, ids[2:3]), reference[2:3])
    torch.testing.assert_close(gene_attention(model.scbert, ids), reference)
    assert isinstance(model.scbert, ScBertModel)


def test_gene_attention_leaves_the_model_as_it_was_and_uses_no_dropout():
    model = build(seed=3, attention_probs_dropout_prob=0.5, embedding_dropout_prob=0.5, hidden_dropout_prob=0.5)
    model.train()
    ids = input_ids(2, seed=3)
    first = gene_attention(model, ids)
    assert model.training  # restored
    torch.testing.assert_close(gene_attention(model, ids), first)  # deterministic: evaluation mode inside
    model.eval()
    torch.testing.assert_close(first, explicit_column_means(model, ids, 2), atol=1e-5, rtol=0)
    assert not any(module._forward_pre_hooks for module in model.modules())


def test_gene_attention_refuses_a_layer_that_does_not_exist():
    model = build()
    with pytest.raises(ValueError, match=r"layer=3 does not exist: the model has 3 layers"):
        gene_attention(model, input_ids(), layer=3)
    with pytest.raises(ValueError, match="must have shape"):
        gene_attention(model, input_ids()[0])
