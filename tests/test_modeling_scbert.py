import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, Trainer

from modeling_scbert import (
    ScBertConfig,
    ScBertForMaskedLM,
    ScBertForSequenceClassification,
    ScBertModel,
)
from modeling_scbert.modeling_scbert import (
    batched_chunk_size,
    batched_favor_attention,
    chunked_favor_attention,
    draw_orthogonal_random_features,
    linear_attention,
    resolve_attention_schedule,
    softmax_kernel_features,
)

# Both schedules compute the same attention; behavioural tests run under each (both run on a CPU when chosen).
SCHEDULES = ["per_cell", "batched"]


class ScBertModelTester:
    """Tiny models in the transformers style: 2 layers, width 32, a dozen genes."""

    batch_size = 3
    num_genes = 12

    def get_config(self, **overrides) -> ScBertConfig:
        values = {
            "num_genes": self.num_genes,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "head_dim": 8,
            "intermediate_size": 64,
            "num_random_features": 24,
            "classifier_hidden_sizes": [16, 8],
            "num_labels": 4,
        }
        values.update(overrides)
        return ScBertConfig(**values)

    def input_ids(self, seed: int = 0, batch_size: int | None = None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, 6, (batch_size or self.batch_size, self.num_genes + 1), generator=generator)
        ids[:, -1] = 0  # the appended token
        return ids


tester = ScBertModelTester()


def build(model_class, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return model_class(tester.get_config(**overrides)).eval()


# --- FAVOR+ math ----------------------------------------------------------------------------------------------------


def test_random_features_are_blockwise_orthogonal_with_chi_norms():
    generator = torch.Generator().manual_seed(0)
    features = draw_orthogonal_random_features(20, 8, generator=generator)
    assert features.shape == (20, 8)
    directions = features / features.norm(dim=-1, keepdim=True)
    for start in (0, 8):  # two full blocks of 8 orthogonal rows
        block = directions[start : start + 8]
        torch.testing.assert_close(block @ block.T, torch.eye(8), atol=1e-5, rtol=0)
    many = draw_orthogonal_random_features(8 * 500, 8, generator=generator)
    # Row norms are those of 8-dimensional standard Gaussian vectors: E|g|^2 = 8.
    assert abs(many.norm(dim=-1).pow(2).mean().item() - 8.0) < 0.3
    again = draw_orthogonal_random_features(20, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, features)


def _exact_softmax_attention(q, k, v):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return torch.softmax(scores, dim=-1) @ v


def _favor_attention(q, k, v, projection):
    qf = softmax_kernel_features(q, projection, is_query=True, epsilon=1e-4)
    kf = softmax_kernel_features(k, projection, is_query=False, epsilon=1e-4)
    return linear_attention(qf, kf, v)


def test_favor_matches_the_performer_pytorch_reference():
    performer_pytorch = pytest.importorskip("performer_pytorch")
    torch.manual_seed(0)
    # One sample and one head: performer-pytorch 1.1.4 takes the key stabiliser per head, scBERT per sample.
    q, k, v = (torch.randn(1, 1, 50, 16) for _ in range(3))
    reference = performer_pytorch.FastAttention(dim_heads=16, nb_features=40)
    expected = reference(q, k, v)
    ours = _favor_attention(q, k, v, reference.projection_matrix)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


def test_favor_approaches_exact_softmax_attention_as_features_grow():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (0.5 * torch.randn(2, 2, 64, 16, generator=generator) for _ in range(3))
    exact = _exact_softmax_attention(q, k, v)
    errors = {}
    for num_features in (16, 256, 8192):
        trials = [
            (_favor_attention(q, k, v, draw_orthogonal_random_features(num_features, 16, generator=generator)) - exact)
            .abs()
            .mean()
            .item()
            for _ in range(3)
        ]
        errors[num_features] = float(np.mean(trials))
    # Measured: about 0.12 at 16 features, 0.024 at 256 and 0.004 at 8192 (mean absolute error; |exact| ~ 0.1-0.5).
    assert errors[16] > errors[256] > errors[8192]
    assert errors[8192] < 0.01, errors


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_key_stabiliser_is_per_sample_so_batches_do_not_interact(schedule):
    model = build(ScBertModel, attention_schedule=schedule)
    ids = tester.input_ids(batch_size=4)
    ids[2] = 5  # a cell with much larger keys than the others
    with torch.no_grad():
        batched = model(ids).last_hidden_state
        single = torch.cat([model(ids[i : i + 1]).last_hidden_state for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


# --- shapes and outputs ---------------------------------------------------------------------------------------------


def test_output_shapes_per_head():
    ids = tester.input_ids()
    seq = tester.num_genes + 1
    with torch.no_grad():
        base = build(ScBertModel)(ids, output_hidden_states=True)
        mlm = build(ScBertForMaskedLM)(ids)
        conv = build(ScBertForSequenceClassification)(ids)
        pooled = build(ScBertForSequenceClassification, classifier_type="pooled")(ids)
    assert base.last_hidden_state.shape == (3, seq, 32)
    assert len(base.hidden_states) == 3 and base.hidden_states[0].shape == (3, seq, 32)
    assert mlm.logits.shape == (3, seq, 7)
    assert conv.logits.shape == pooled.logits.shape == (3, 4)
    assert base.hidden_states is not None
    with torch.no_grad():
        as_tuple = build(ScBertForMaskedLM)(ids, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], mlm.logits)


def test_masked_lm_loss_ignores_minus_100():
    model = build(ScBertForMaskedLM)
    ids = tester.input_ids()
    labels = torch.full_like(ids, -100)
    labels[:, [1, 4]] = ids[:, [1, 4]]
    out = model(ids, labels=labels)
    logits = out.logits[:, [1, 4]].reshape(-1, 7)
    expected = torch.nn.functional.cross_entropy(logits, ids[:, [1, 4]].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_classification_problem_types():
    ids = tester.input_ids()
    model = build(ScBertForSequenceClassification)
    labels = torch.tensor([0, 3, 1])
    out = model(ids, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    multi = build(ScBertForSequenceClassification)
    targets = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]])
    out = multi(ids, labels=targets)
    assert multi.config.problem_type == "multi_label_classification"
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets))
    regression = build(ScBertForSequenceClassification, num_labels=1)
    values = torch.tensor([0.5, -1.0, 2.0])
    out = regression(ids, labels=values)
    assert regression.config.problem_type == "regression"
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(), values))


@pytest.mark.parametrize("classifier_type", ["conv", "pooled"])
def test_classifier_input_dropout_drops_the_head_input_in_training_only(classifier_type):
    ids = tester.input_ids()
    plain = build(ScBertForSequenceClassification, classifier_type=classifier_type)
    dropped = build(ScBertForSequenceClassification, classifier_type=classifier_type, classifier_input_dropout=0.5)
    # Same weights: the dropout has no parameters, and evaluation does not drop anything.
    torch.testing.assert_close(dropped(ids).logits, plain(ids).logits)
    head = dropped.classifier
    seen = []
    handle = head.hidden_layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    dropped.train()
    torch.manual_seed(1)
    logits = dropped(ids).logits
    handle.remove()
    encoded = dropped.scbert(ids).last_hidden_state
    if classifier_type == "conv":
        undropped = torch.relu(head.token_projection(encoded).squeeze(-1))
    else:
        undropped = encoded.mean(dim=1)
    kept = seen[0] != 0
    # Every head input is either dropped or scaled by 1 / (1 - p), and about half are dropped.
    torch.testing.assert_close(seen[0][kept], 2 * undropped[kept])
    assert 0.2 < 1 - kept.float().mean() < 0.8
    assert not torch.allclose(logits, plain(ids).logits)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_a_conv_head_whose_scores_are_all_negative_learns_only_with_a_leaky_activation(activation):
    # The projection to per-gene scores is one Linear shared by every position: once it is negative everywhere, a
    # ReLU passes no gradient to it or to the encoder, and the model predicts one class for good.
    model = build(ScBertForSequenceClassification, classifier_score_activation=activation).train()
    with torch.no_grad():
        model.classifier.token_projection.bias.fill_(-100.0)
    labels = torch.tensor([0, 1, 2])
    model(tester.input_ids(), labels=labels).loss.backward()
    projection_grad = model.classifier.token_projection.weight.grad.abs().sum()
    encoder_grad = model.scbert.encoder.layers[-1].attention.query.weight.grad.abs().sum()
    if activation == "relu":
        assert projection_grad == 0 and encoder_grad == 0
    else:
        assert projection_grad > 0 and encoder_grad > 0


@pytest.mark.parametrize("activation", ["leaky_relu", "linear"])
def test_the_per_gene_scores_carry_the_cells_differences_whichever_sign_the_projection_takes(activation):
    # The conv head projects every gene's encoding to one score with one shared projection, whose sign is set by chance
    # early in training. On the Kang 2018 PBMCs a seed that collapsed (README recipe, seed 3) had learned it the other
    # way round from a good seed: expressed genes projected below zero, where a leaky ReLU passes 1% of the
    # difference, so the head saw almost nothing of the cells (docs/training.md, "Seeds"). Without an activation on
    # the scores (new models), either sign passes it whole; the MLP after it has its own non-linearity.
    model = build(ScBertForSequenceClassification, classifier_score_activation=activation)
    cells = tester.input_ids(batch_size=16, seed=5)

    def cell_to_cell_spread():
        seen = []
        handle = model.classifier.hidden_layers[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        with torch.no_grad():
            model(cells)
        handle.remove()
        return float(seen[0].std(0).mean())

    projection = model.classifier.token_projection
    with torch.no_grad():
        projection.bias.fill_(3.0 * projection(model.scbert(cells).last_hidden_state).abs().max())  # all positive
        positive = cell_to_cell_spread()
        projection.weight.neg_()
        projection.bias.neg_()  # the same projection, the other sign: all negative
        negative = cell_to_cell_spread()
    if activation == "linear":
        assert negative == pytest.approx(positive, rel=1e-5)
    else:
        assert negative == pytest.approx(0.01 * positive, rel=1e-3)


def test_new_models_score_genes_without_an_activation_and_published_ones_keep_the_relu():
    from modeling_scbert.training.model_setup import NEW_MODEL_DEFAULTS

    assert NEW_MODEL_DEFAULTS["classifier_score_activation"] == "linear"
    assert ScBertConfig().classifier_score_activation == "relu"


@pytest.mark.parametrize("classifier_type", ["conv", "pooled"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_hidden_units_pushed_below_zero_keep_learning_only_without_a_relu(activation, classifier_type):
    # A hidden unit of the head's MLP whose input is negative for every cell passes no gradient under a ReLU: the
    # units that the first optimiser steps push there never come back. A GELU's slope is small there, not zero.
    model = build(
        ScBertForSequenceClassification, classifier_hidden_act=activation, classifier_type=classifier_type
    ).train()
    with torch.no_grad():
        model.classifier.hidden_layers[0].weight.mul_(1e-3)
        model.classifier.hidden_layers[0].bias.fill_(-3.0)
    model(tester.input_ids(), labels=torch.tensor([0, 1, 2])).loss.backward()
    first_layer_grad = model.classifier.hidden_layers[0].weight.grad.abs().sum()
    encoder_grad = model.scbert.encoder.layers[-1].attention.query.weight.grad.abs().sum()
    if activation == "relu":
        assert first_layer_grad == 0 and encoder_grad == 0
    else:
        assert first_layer_grad > 0 and encoder_grad > 0


def test_the_published_head_keeps_its_relus_and_a_bad_activation_is_refused():
    assert ScBertConfig().classifier_score_activation == "relu"
    assert ScBertConfig().classifier_hidden_act == "relu"
    for name in ("classifier_score_activation", "classifier_hidden_act"):
        with pytest.raises(ValueError, match=name):
            tester.get_config(**{name: "leaky"})


def test_inputs_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match="13"):
        build(ScBertModel)(torch.zeros(1, 20, dtype=torch.long))
    with pytest.raises(ValueError, match="'conv' classification head reads all 13 positions"):
        build(ScBertForSequenceClassification)(torch.zeros(1, 9, dtype=torch.long))
    # the pooled head is length-independent
    assert build(ScBertForSequenceClassification, classifier_type="pooled")(
        torch.zeros(1, 9, dtype=torch.long)
    ).logits.shape == (1, 4)


# --- attention mask -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("model_class", [ScBertModel, ScBertForSequenceClassification])
def test_masked_positions_change_nothing_for_the_others(model_class, schedule):
    overrides = {"classifier_type": "pooled"} if model_class is ScBertForSequenceClassification else {}
    overrides["attention_schedule"] = schedule
    model = build(model_class, **overrides)
    ids = tester.input_ids()
    mask = torch.ones_like(ids)
    mask[:, 5:9] = 0
    mask[1, 2] = 0
    other = ids.clone()
    other[:, 5:9] = (ids[:, 5:9] + 3) % 6
    other[1, 2] = 5 - ids[1, 2]
    with torch.no_grad():
        a, b = model(ids, attention_mask=mask), model(other, attention_mask=mask)
    if model_class is ScBertModel:
        keep = mask.bool()
        torch.testing.assert_close(a.last_hidden_state[keep], b.last_hidden_state[keep], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(a.last_hidden_state[~keep], b.last_hidden_state[~keep])
    else:
        torch.testing.assert_close(a.logits, b.logits, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_padding_equals_the_unpadded_cell(schedule):
    model = build(ScBertModel, attention_schedule=schedule)
    ids = tester.input_ids(batch_size=1)[:, :8]
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 5)], dim=1)
    with torch.no_grad():
        alone = model(ids).last_hidden_state
        with_padding = model(padded, attention_mask=mask).last_hidden_state[:, :8]
    torch.testing.assert_close(with_padding, alone, atol=1e-6, rtol=1e-6)


def test_gene_ids_select_rows_of_the_gene_table():
    model = build(ScBertModel)
    ids = tester.input_ids(batch_size=1)
    subset = torch.tensor([[2, 5, 7, 12]])
    with torch.no_grad():
        full = model.embeddings(ids)
        part = model.embeddings(ids[:, subset[0]], gene_ids=subset)
    torch.testing.assert_close(part, full[:, subset[0]])


# --- gradients ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gene_embedding_type", ["frozen", "learned"])
def test_every_trainable_parameter_gets_a_gradient(gene_embedding_type):
    for model_class in (ScBertForMaskedLM, ScBertForSequenceClassification):
        model = build(model_class, gene_embedding_type=gene_embedding_type).train()
        ids = tester.input_ids()
        labels = ids.clone() if model_class is ScBertForMaskedLM else torch.tensor([0, 1, 2])
        model(ids, labels=labels).loss.backward()
        gene_table = model.scbert.embeddings.gene_embeddings.weight
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        if gene_embedding_type == "frozen":
            assert not gene_table.requires_grad and gene_table.grad is None
            assert all(p is not gene_table for p in model.parameters())
            assert torch.count_nonzero(gene_table[-1]) == 0  # the appended token's row is zero
        else:
            assert gene_table.requires_grad and gene_table.grad is not None


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gradient_checkpointing_gives_the_same_gradients(schedule):
    ids = tester.input_ids()
    labels = torch.tensor([0, 1, 2])
    grads = []
    for checkpointing in (False, True):
        model = build(ScBertForSequenceClassification, attention_schedule=schedule).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.scbert.encoder.layers)
        model(ids, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_trainer_does_not_scale_the_loss_by_the_world_size(tmp_path):
    from transformers import TrainingArguments

    model = build(ScBertForSequenceClassification)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
    assert trainer.model_accepts_loss_kwargs is False


# --- random features ------------------------------------------------------------------------------------------------


def test_random_features_change_only_when_redrawn():
    model = build(ScBertForMaskedLM)
    before = [layer.attention.random_features.clone() for layer in model.scbert.encoder.layers]
    ids = tester.input_ids()
    model.train()
    for _ in range(3):
        model(ids, labels=ids).loss.backward()
    model.eval()
    with torch.no_grad():
        first = model(ids).logits
        second = model(ids).logits
    assert torch.equal(first, second)
    for layer, old in zip(model.scbert.encoder.layers, before):
        assert torch.equal(layer.attention.random_features, old)
    model.redraw_random_features(generator=torch.Generator().manual_seed(1))
    for layer, old in zip(model.scbert.encoder.layers, before):
        assert not torch.equal(layer.attention.random_features, old)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, first)


# --- saving and loading ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", [ScBertModel, ScBertForMaskedLM, ScBertForSequenceClassification])
def test_save_load_round_trip_is_exact(model_class, tmp_path):
    model = build(model_class)
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path).eval()
    for (name, tensor), (loaded_name, loaded_tensor) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert name == loaded_name and torch.equal(tensor, loaded_tensor), name
    gene_table = loaded.base_model.embeddings.gene_embeddings.weight
    assert not gene_table.requires_grad and all(p is not gene_table for p in loaded.parameters())
    ids = tester.input_ids()
    with torch.no_grad():
        # Weights are bit-identical; loaded tensors may sit at other memory alignments, which picks other SIMD paths
        # in the small matrix products, so the outputs agree to rounding (measured: 3e-12 on logits of ~1e-5).
        torch.testing.assert_close(loaded(ids)[0], model(ids)[0], rtol=1e-5, atol=1e-10)


def test_auto_classes_round_trip(tmp_path):
    build(ScBertForSequenceClassification).save_pretrained(tmp_path / "cls")
    build(ScBertForMaskedLM).save_pretrained(tmp_path / "mlm")
    saved = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert saved["model_type"] == "scbert"
    assert saved["auto_map"]["AutoConfig"] == "configuration_scbert.ScBertConfig"
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "cls"), ScBertConfig)
    assert (
        type(AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls")) is ScBertForSequenceClassification
    )
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm")) is ScBertForMaskedLM
    assert type(AutoModel.from_pretrained(tmp_path / "mlm")) is ScBertModel


def test_trust_remote_code_loads_without_the_package(tmp_path):
    model = build(ScBertForSequenceClassification, classifier_type="conv")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    ids = tester.input_ids()
    np.save(tmp_path / "ids.npy", ids.numpy())
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", model(ids).logits.numpy())
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["modeling_scbert"] = None  # the package must not be importable here
        sys.modules["tokenization"] = None
        import numpy as np, torch
        from transformers import AutoModelForSequenceClassification
        try:
            import modeling_scbert
        except ImportError:
            pass
        else:
            raise SystemExit("modeling_scbert is importable")
        model = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            logits = model(torch.from_numpy(np.load({str(tmp_path / "ids.npy")!r}))).logits.numpy()
        np.testing.assert_allclose(logits, np.load({str(tmp_path / "expected.npy")!r}), rtol=1e-5, atol=1e-10)
        print("remote-code-ok", type(model).__name__)
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-code-ok ScBertForSequenceClassification" in result.stdout


# --- the chunked attention ------------------------------------------------------------------------------------------


def _random_attention_inputs(dtype=torch.float32, tokens=37):
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, tokens, 8, generator=generator, dtype=dtype) for _ in range(3))
    projection = draw_orthogonal_random_features(20, 8, generator=generator).to(dtype)
    mask = torch.ones(2, tokens, dtype=torch.bool)
    mask[1, 20:] = False
    mask[0, 3] = False
    return q, k, v, projection, mask


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 1000])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_attention_equals_the_unchunked_functions(chunk_size, masked):
    q, k, v, projection, mask = _random_attention_inputs()
    mask = mask if masked else None
    expected = linear_attention(
        softmax_kernel_features(q, projection, is_query=True, epsilon=1e-4),
        softmax_kernel_features(k, projection, is_query=False, epsilon=1e-4, mask=mask),
        v,
    )
    chunked = chunked_favor_attention(
        *(t.transpose(1, 2) for t in (q, k, v)), projection, epsilon=1e-4, chunk_size=chunk_size, mask=mask
    )
    torch.testing.assert_close(chunked.transpose(1, 2), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [4, 1000])
def test_chunked_attention_backward_equals_autograd_of_the_unchunked_functions(chunk_size):
    q, k, v, projection, mask = _random_attention_inputs(dtype=torch.float64)
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def gradients(attention):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        (attention(*inputs) * upstream).sum().backward()
        return [t.grad for t in inputs]

    def unchunked(q_, k_, v_):
        return linear_attention(
            softmax_kernel_features(q_, projection, is_query=True, epsilon=1e-4),
            softmax_kernel_features(k_, projection, is_query=False, epsilon=1e-4, mask=mask),
            v_,
        )

    def chunked(q_, k_, v_):
        # float64 end to end: the function computes in float32 only for lower-precision inputs
        layout = (t.transpose(1, 2) for t in (q_, k_, v_))  # (batch, tokens, heads, head_dim)
        return chunked_favor_attention(*layout, projection, epsilon=1e-4, chunk_size=chunk_size, mask=mask).transpose(
            1, 2
        )

    for got, expected, name in zip(gradients(chunked), gradients(unchunked), "qkv", strict=True):
        torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-7, msg=f"gradient of {name}")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_model_output_does_not_depend_on_the_chunk_size(schedule):
    ids = tester.input_ids()
    mask = torch.ones_like(ids)
    mask[0, 4:7] = 0
    outputs = []
    for chunk_size in (3, 5, None):
        model = build(ScBertForMaskedLM, attention_chunk_size=chunk_size, attention_schedule=schedule).train()
        out = model(ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        outputs.append((out.logits.detach(), model.scbert.embeddings.expression_embeddings.weight.grad.clone()))
    for logits, grad in outputs[:-1]:
        torch.testing.assert_close(logits, outputs[-1][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grad, outputs[-1][1], atol=1e-7, rtol=1e-4)


def test_attention_kernel_stays_in_float32_under_autocast():
    q, k, v, projection, mask = _random_attention_inputs()
    layout = [t.transpose(1, 2) for t in (q, k, v)]
    plain = chunked_favor_attention(*layout, projection, epsilon=1e-4, chunk_size=8, mask=mask)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = chunked_favor_attention(*layout, projection, epsilon=1e-4, chunk_size=8, mask=mask)
        # half-precision inputs are promoted for the kernel and the result cast back
        half = chunked_favor_attention(
            *(t.to(torch.bfloat16) for t in layout), projection, epsilon=1e-4, chunk_size=8, mask=mask
        )
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, plain)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), plain, atol=0.05, rtol=0.05)


def test_bfloat16_autocast_training_step_runs_and_agrees():
    model = build(ScBertForMaskedLM).train()
    ids = tester.input_ids()
    reference = model(ids, labels=ids).loss
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - reference.item()) < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("chunk_size", [4, None])
def test_inference_streaming_path_equals_the_training_path(chunk_size):
    # Without gradients the attention projects q/k/v chunk by chunk; with them it runs the autograd function.
    model = build(ScBertForMaskedLM, attention_chunk_size=chunk_size)
    ids = tester.input_ids()
    mask = torch.ones_like(ids)
    mask[1, 3:8] = 0
    with_grad = model(ids, attention_mask=mask).logits
    with torch.inference_mode():
        streamed = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(streamed, with_grad.detach(), atol=1e-6, rtol=1e-5)


# --- the batched schedule -------------------------------------------------------------------------------------------


def _plain_favor(q, k, v, projection, mask):
    return linear_attention(
        softmax_kernel_features(q, projection, is_query=True, epsilon=1e-4),
        softmax_kernel_features(k, projection, is_query=False, epsilon=1e-4, mask=mask),
        v,
    )


def _both_schedules(q, k, v, projection, mask, chunk_size):
    """The per-cell and the batched schedule on (batch, heads, tokens, head_dim) inputs, in that layout."""
    layout = [t.transpose(1, 2) for t in (q, k, v)]
    options = {"epsilon": 1e-4, "chunk_size": chunk_size, "mask": mask}
    per_cell = chunked_favor_attention(*layout, projection, **{**options, "chunk_size": chunk_size or 1000})
    return {"per_cell": per_cell.transpose(1, 2), "batched": batched_favor_attention(*layout, projection, **options)}


@pytest.mark.parametrize("chunk_size", [1, 5, 16, None])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_schedules_equal_the_plain_functions_forward_and_backward(chunk_size, masked, dtype):
    q, k, v, projection, mask = _random_attention_inputs(dtype=dtype)
    mask = mask if masked else None
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)

    def run(attention):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        output = attention(*inputs)
        (output * upstream).sum().backward()
        return [output.detach(), *(t.grad for t in inputs)]

    expected = run(lambda q_, k_, v_: _plain_favor(q_, k_, v_, projection, mask))
    for schedule in SCHEDULES:

        def attention(q_, k_, v_, schedule=schedule):
            output = _both_schedules(q_, k_, v_, projection, mask, chunk_size)[schedule]
            return output if schedule == "per_cell" else output.transpose(1, 2)

        for got, want, name in zip(run(attention), expected, ["output", "dq", "dk", "dv"], strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{schedule}: {name}")


def test_batched_attention_is_per_sample_with_a_fully_masked_chunk():
    # Sample 1 has no unmasked key in the first chunk: its chunk maximum is -inf and must not turn into nan.
    q, k, v, projection, mask = _random_attention_inputs()
    mask[1, :10] = False
    expected = _plain_favor(q, k, v, projection, mask)
    layout = [t.transpose(1, 2) for t in (q, k, v)]
    batched = batched_favor_attention(*layout, projection, epsilon=1e-4, chunk_size=10, mask=mask)
    torch.testing.assert_close(batched.transpose(1, 2), expected, atol=1e-6, rtol=1e-5)
    alone = batched_favor_attention(*(t[1:] for t in layout), projection, epsilon=1e-4, chunk_size=10, mask=mask[1:])
    torch.testing.assert_close(alone, batched[1:], atol=1e-6, rtol=1e-5)


def test_batched_chunks_fill_the_budget_in_equal_sizes():
    # The published shapes: one chunk for a cell, two for 8 cells, many small ones for 128.
    sizes = {batch: batched_chunk_size(16907, batch_size=batch, num_heads=10, num_features=266) for batch in (1, 8)}
    assert sizes == {1: 16907, 8: 8454}
    assert batched_chunk_size(16907, batch_size=128, num_heads=10, num_features=266) * 128 * 10 * 266 <= 2**28
    assert batched_chunk_size(100, batch_size=8, num_heads=10, num_features=266, chunk_size=30) == 25


def test_schedule_defaults_to_per_cell_on_cpu_and_batched_on_accelerators():
    config = tester.get_config()
    assert config.attention_schedule is None
    assert resolve_attention_schedule(config, torch.device("cpu")) == "per_cell"
    assert resolve_attention_schedule(config, torch.device("cuda", 0)) == "batched"
    assert resolve_attention_schedule(config, torch.device("mps")) == "batched"
    chosen = tester.get_config(attention_schedule="per_cell")
    assert resolve_attention_schedule(chosen, torch.device("cuda", 0)) == "per_cell"


@pytest.mark.parametrize("masked", [False, True])
def test_schedules_give_the_same_model_outputs_and_gradients(masked):
    ids = tester.input_ids()
    mask = torch.ones_like(ids)
    if masked:
        mask[1, 3:8] = 0
    results = {}
    for schedule in SCHEDULES:
        model = build(ScBertForMaskedLM, attention_schedule=schedule).train()
        out = model(ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        with torch.inference_mode():
            inferred = model(ids, attention_mask=mask).logits
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        results[schedule] = (out.logits.detach(), inferred, grads)
    (train_a, infer_a, grads_a), (train_b, infer_b, grads_b) = results.values()
    torch.testing.assert_close(train_b, train_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(infer_b, infer_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(infer_b, train_b, atol=1e-5, rtol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-6, rtol=1e-4, msg=name)


def test_batched_attention_kernel_stays_in_float32_under_autocast():
    q, k, v, projection, mask = _random_attention_inputs()
    layout = [t.transpose(1, 2) for t in (q, k, v)]
    plain = batched_favor_attention(*layout, projection, epsilon=1e-4, chunk_size=8, mask=mask)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = batched_favor_attention(*layout, projection, epsilon=1e-4, chunk_size=8, mask=mask)
        half = batched_favor_attention(
            *(t.to(torch.bfloat16) for t in layout), projection, epsilon=1e-4, chunk_size=8, mask=mask
        )
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, plain)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), plain, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_half_precision_autocast_stays_within_the_measured_distance_of_float32(schedule):
    # Linear layers in bf16/fp16, the FAVOR+ kernel in float32. Measured on random weights at the published widths
    # (width 200, 10 heads of 64, 266 features), final encodings (the LayerNorm output, mean |x| 0.8):
    #   2 layers, 300 genes, 3 cells:  bf16 max 0.017 (per cell) / 0.025 (batched), mean 0.003 / 0.004;
    #                                  fp16 max 0.0023 / 0.0026, mean 0.0004 / 0.0005
    #   6 layers, 1,000 genes, 4 cells: bf16 max 0.020 / 0.031, mean 0.003 / 0.005; fp16 max 0.0024 / 0.0044.
    # The bounds below leave about 2x room over the 2-layer figures.
    torch.manual_seed(0)
    config = ScBertConfig(num_genes=300, num_hidden_layers=2, attention_schedule=schedule)
    model = ScBertModel(config).eval()
    ids = torch.randint(0, 6, (3, 301), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model(ids).last_hidden_state
        for dtype, max_bound, mean_bound in ((torch.bfloat16, 0.05, 0.008), (torch.float16, 0.006, 0.001)):
            with torch.autocast(device_type="cpu", dtype=dtype):
                lower = model(ids).last_hidden_state
            difference = (lower.float() - reference).abs()
            assert difference.max() < max_bound and difference.mean() < mean_bound, (dtype, difference.max())
            assert difference.max() > 0  # autocast did run the linear layers in lower precision


@pytest.mark.slow
def test_both_schedules_equal_the_plain_functions_at_full_length():
    # The published sequence length, head size and number of random features (2 of the 10 heads, for time), two
    # cells, the second with its last 4,907 positions masked: sums over 16,907 keys, one or two batched chunks.
    generator = torch.Generator().manual_seed(0)
    q, k, v = (0.5 * torch.randn(2, 2, 16907, 64, generator=generator) for _ in range(3))
    projection = draw_orthogonal_random_features(266, 64, generator=generator)
    mask = torch.ones(2, 16907, dtype=torch.bool)
    mask[1, 12000:] = False
    upstream = torch.randn(q.shape, generator=generator)

    def run(attention):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        output = attention(*inputs)
        (output * upstream).sum().backward()
        return [output.detach(), *(t.grad for t in inputs)]

    # Measured: at most 1e-6 from the plain functions (outputs up to 0.08, gradients up to 0.7), both schedules.
    expected = run(lambda q_, k_, v_: _plain_favor(q_, k_, v_, projection, mask))
    for schedule, chunk_size in (("per_cell", 512), ("batched", None), ("batched", 9000)):

        def attention(q_, k_, v_, schedule=schedule, chunk_size=chunk_size):
            output = _both_schedules(q_, k_, v_, projection, mask, chunk_size)[schedule]
            return output if schedule == "per_cell" else output.transpose(1, 2)

        for got, want, name in zip(run(attention), expected, ["output", "dq", "dk", "dv"], strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{schedule} {chunk_size}: {name}")


@pytest.mark.slow
def test_the_batched_schedule_compiles_and_gives_the_eager_output():
    # bench_model.py --device cuda times the batched schedule under torch.compile; it must compile and agree.
    model = build(ScBertForMaskedLM, attention_schedule="batched")
    ids = tester.input_ids()
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, dynamic=False)(ids).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
