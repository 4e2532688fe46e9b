"""Loading a model with its tokenizer (modeling_scbert.annotation.inference, ScBertTokenizer.from_pretrained), and the one rule
that a model's panel is its tokenizer's (ScBertTokenizer.check_model_config), as every entry point applies it."""

import pytest
import torch
from conftest import save_tiny_annotator
from transformers import TrainerControl, TrainerState, TrainingArguments, pipeline

from modeling_scbert import ScBertForSequenceClassification
from modeling_scbert.annotation.annotate import annotate, embed
from modeling_scbert.annotation.inference import load_annotator, resolve_model
from modeling_scbert.cli import main as cli_main
from modeling_scbert.training.trainer import ScBertFeatureRedrawCallback
from modeling_scbert.training.workflows import finetune
from tests.test_annotation_annotate import CLASSES, GENES, make_adata
from tokenization import ScBertTokenizer
from tokenization.pipeline_scbert import TASK, ScBertCellTypeAnnotationPipeline, save_pipeline_code

# The model reads 12 genes; the folder's tokenizer has 5.
MISMATCH = "The model's panel has 12 genes but the tokenizer's has 5; use the tokenizer saved with the model"


@pytest.fixture(scope="module")
def mismatched_dir(tmp_path_factory):
    """A saved classifier folder whose tokenizer was overwritten with a smaller panel (as a hand-edited folder)."""
    folder = save_tiny_annotator(tmp_path_factory.mktemp("mismatched"), GENES, CLASSES)
    save_pipeline_code(folder)
    ScBertTokenizer(GENES[:5]).save_pretrained(folder)
    return folder


def _message(call) -> str:
    with pytest.raises(ValueError) as caught:
        call()
    return str(caught.value)


def test_a_folder_whose_tokenizer_is_not_the_models_is_refused_with_one_message(mismatched_dir, tmp_path, capsys):
    folder = str(mismatched_dir)
    training_args = TrainingArguments(str(tmp_path / "run"), use_cpu=True, report_to=[], save_strategy="no")
    messages = {
        "annotate": _message(lambda: annotate(make_adata(), folder, progress=False)),
        "embed": _message(lambda: embed(make_adata(), folder, progress=False)),
        "pipeline": _message(lambda: pipeline(TASK, model=folder, pipeline_class=ScBertCellTypeAnnotationPipeline)),
        "finetune": _message(
            lambda: finetune(make_adata(), training_args=training_args, model=folder, label_key="truth")
        ),
    }
    assert all(MISMATCH in message for message in messages.values()), messages
    assert len(set(messages.values())) == 1, messages  # one definition, one message
    assert not (tmp_path / "run").exists()  # refused before training started

    out = tmp_path / "out.h5ad"
    make_adata().write_h5ad(tmp_path / "cells.h5ad")
    assert (
        cli_main(["annotate", "--model", folder, "--input", str(tmp_path / "cells.h5ad"), "--output", str(out)]) == 2
    )
    assert MISMATCH in capsys.readouterr().err
    assert not out.exists()


def test_the_rule_reads_a_config_object_or_its_dict():
    tokenizer = ScBertTokenizer(GENES)
    tokenizer.check_model_config({"num_genes": len(GENES)})
    with pytest.raises(ValueError, match="The model's panel has 3 genes but the tokenizer's has 12"):
        tokenizer.check_model_config({"num_genes": 3})
    with pytest.raises(ValueError, match="The model's panel has None genes"):
        tokenizer.check_model_config({})


def test_a_model_object_with_another_tokenizer_is_refused(mismatched_dir):
    model = ScBertForSequenceClassification.from_pretrained(mismatched_dir)
    with pytest.raises(ValueError, match=MISMATCH):
        resolve_model(model, ScBertTokenizer(GENES[:5]), model_class=ScBertForSequenceClassification)
    resolved, tokenizer, name = resolve_model(
        model, ScBertTokenizer(GENES), model_class=ScBertForSequenceClassification
    )
    assert resolved is model and tokenizer.num_genes == 12 and name == str(mismatched_dir)


def test_from_pretrained_says_what_is_missing_and_what_to_pass(mismatched_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass the folder of a saved model or tokenizer"):
        ScBertTokenizer.from_pretrained(tmp_path / "missing")
    bare = tmp_path / "bare"
    ScBertForSequenceClassification.from_pretrained(mismatched_dir).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="No scBERT tokenizer found in .*no tokenizer_config.json") as caught:
        ScBertTokenizer.from_pretrained(bare)
    assert "ScBertTokenizer.save_pretrained(folder)" in str(caught.value)
    ScBertTokenizer(GENES).save_pretrained(bare)
    (bare / "genes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="has tokenizer_config.json but no genes.txt"):
        ScBertTokenizer.from_pretrained(bare)
    # A name that is no folder and no cached Hub repository (offline here) says first that no such folder exists.
    with pytest.raises(FileNotFoundError, match="There is no folder 'my-lab/none' here.*not in the local Hub cache"):
        ScBertTokenizer.from_pretrained("my-lab/none", cache_dir=tmp_path / "cache", local_files_only=True)
    # load_annotator needs nothing else: its errors are these.
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_annotator(tmp_path / "missing")


def test_the_redraw_callback_reaches_a_wrapped_or_compiled_model(tmp_path):
    """accelerate's extract_model_from_parallel unwraps DataParallel and torch.compile alike."""
    model = ScBertForSequenceClassification.from_pretrained(save_tiny_annotator(tmp_path, GENES, CLASSES))
    before = {name: buffer.clone() for name, buffer in model.named_buffers() if name.endswith("random_features")}
    assert before, "the model has random-feature buffers"
    callback = ScBertFeatureRedrawCallback(interval=1, seed=0)
    args = TrainingArguments(str(tmp_path / "unused"), use_cpu=True, report_to=[])
    for step, wrapped in enumerate((torch.nn.DataParallel(model), torch.compile(model)), start=1):
        callback.on_step_end(args, TrainerState(global_step=step), TrainerControl(), model=wrapped)
        after = dict(model.named_buffers())
        assert all(not torch.equal(before[name], after[name]) for name in before), type(wrapped).__name__
        before = {name: after[name].clone() for name in before}
