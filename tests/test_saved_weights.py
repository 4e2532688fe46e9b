"""Saved weights that load but are wrong are refused by the package's own loading: missing tensors, tensors of
another kind (integers for floats), NaN or infinite values; a whole kind each, on a tiny model saved by the test."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_hub import make_annotator

from modeling_scbert import ScBertForMaskedLM, ScBertForSequenceClassification, ScBertModel
from modeling_scbert.loading import load_checked_model
from tokenization.saved_weights import DamagedWeightsError

WEIGHTS = "model.safetensors"


def _rewrite(folder, change):
    tensors = load_file(str(folder / WEIGHTS))
    change(tensors)
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})


@pytest.fixture()
def annotator(tmp_path):
    return make_annotator(tmp_path / "model")


def test_an_intact_folder_loads_as_any_scbert_class(annotator):
    model = load_checked_model(ScBertForSequenceClassification, annotator)
    encoder = load_checked_model(ScBertModel, annotator)  # the encoder of a classifier, as embed loads it
    assert torch.equal(
        encoder.embeddings.expression_embeddings.weight, model.scbert.embeddings.expression_embeddings.weight
    )


@pytest.mark.parametrize("which", ["classifier", "encoder", "random_features"])
def test_a_missing_tensor_is_refused_by_name(annotator, which):
    names = list(load_file(str(annotator / WEIGHTS)))
    victim = next(name for name in names if which in name or (which == "encoder" and "layer" in name))
    _rewrite(annotator, lambda tensors: tensors.pop(victim))
    with pytest.raises(DamagedWeightsError, match="missing") as error:
        load_checked_model(ScBertForSequenceClassification, annotator)
    assert victim.removeprefix("scbert.") in str(error.value)


def test_a_tensor_stored_as_integers_is_refused_not_truncated(annotator):
    victim = next(name for name in load_file(str(annotator / WEIGHTS)) if name.endswith("weight"))
    _rewrite(annotator, lambda tensors: tensors.__setitem__(victim, (tensors[victim] * 100).to(torch.int64)))
    with pytest.raises(DamagedWeightsError, match="another kind") as error:
        load_checked_model(ScBertForSequenceClassification, annotator)
    assert "int64" in str(error.value)


def test_half_precision_files_are_not_a_fault(annotator):
    _rewrite(annotator, lambda tensors: tensors.update({k: v.to(torch.bfloat16) for k, v in tensors.items()}))
    load_checked_model(ScBertForSequenceClassification, annotator)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["parameter", "buffer"])
def test_non_finite_weights_are_refused(annotator, value, where):
    def poison(tensors):
        name = next(n for n in tensors if ("random_features" in n) == (where == "buffer") and tensors[n].numel() > 1)
        tensors[name].view(-1)[1] = value

    _rewrite(annotator, poison)
    with pytest.raises(DamagedWeightsError, match="NaN or infinite"):
        load_checked_model(ScBertForSequenceClassification, annotator)


def test_a_new_head_over_a_pretrained_encoder_may_lack_only_the_head(tmp_path, annotator):
    backbone = tmp_path / "backbone"
    ScBertForMaskedLM(ScBertForSequenceClassification.from_pretrained(annotator).config).save_pretrained(backbone)
    with pytest.raises(DamagedWeightsError, match="classifier"):
        load_checked_model(ScBertForSequenceClassification, backbone)
    load_checked_model(ScBertForSequenceClassification, backbone, may_lack=("classifier.",))


def _without_one_head_tensor(annotator):
    victim = next(name for name in load_file(str(annotator / WEIGHTS)) if name.startswith("classifier"))
    _rewrite(annotator, lambda tensors: tensors.pop(victim))
    return victim


def test_annotate_embed_and_the_pipeline_refuse_a_damaged_folder_before_any_cell(annotator):
    import anndata as ad
    import numpy as np
    import pandas as pd
    from transformers import pipeline

    from modeling_scbert import annotate, embed

    victim = _without_one_head_tensor(annotator)
    cells = ad.AnnData(np.ones((3, 12), dtype=np.float32), var=pd.DataFrame(index=[f"GENE{i}" for i in range(12)]))
    with pytest.raises(DamagedWeightsError, match=victim):
        annotate(cells, str(annotator))
    embed(cells, str(annotator))  # the encoder alone is intact: embeddings need no head
    with pytest.raises(DamagedWeightsError, match=victim):
        pipeline("cell-type-annotation", model=str(annotator))
    assert "scbert_cell_type" not in cells.obs


def test_a_model_object_with_non_finite_weights_is_refused_by_annotate(annotator):
    import anndata as ad
    import numpy as np
    import pandas as pd

    from modeling_scbert import annotate
    from tokenization import ScBertTokenizer

    model = ScBertForSequenceClassification.from_pretrained(annotator)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    cells = ad.AnnData(np.ones((3, 12), dtype=np.float32), var=pd.DataFrame(index=[f"GENE{i}" for i in range(12)]))
    with pytest.raises(DamagedWeightsError, match="NaN or infinite"):
        annotate(cells, model, tokenizer=ScBertTokenizer.from_pretrained(annotator))


def test_an_extra_tensor_in_a_part_the_model_has_is_refused_by_name(annotator):
    def add(tensors):
        tensors["classifier.stray_layer.weight"] = torch.zeros(3, 3)
        tensors["scbert.encoder.layers.7.attention.query.weight"] = torch.zeros(2, 2)

    _rewrite(annotator, add)
    with pytest.raises(DamagedWeightsError, match="2 tensors are not the model's") as error:
        load_checked_model(ScBertForSequenceClassification, annotator)
    assert "classifier.stray_layer.weight" in str(error.value) and "layers.7" in str(error.value)


def test_tensors_of_a_part_the_model_lacks_are_not_extra(tmp_path, annotator):
    encoder = load_checked_model(ScBertModel, annotator)  # the classifier's head is not the encoder's: dropped
    backbone = tmp_path / "backbone"
    ScBertForMaskedLM(encoder.config).save_pretrained(backbone)
    load_checked_model(ScBertForSequenceClassification, backbone, may_lack=("classifier.",))  # the LM head: dropped
