"""The reading options are defined once (with their documentation) and reach the tokenizer from every entry point, by
name or as one object; every option of every command is accepted in both spellings."""

import dataclasses
import inspect
import typing

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import save_tiny_annotator
from transformers import TrainingArguments

from modeling_scbert.annotation import annotate as annotate_module
from modeling_scbert.annotation.annotate import annotate, embed
from modeling_scbert.cli import COMMANDS, command_parser
from modeling_scbert.cli import main as cli_main
from modeling_scbert.training import workflows as training_module
from modeling_scbert.training.workflows import finetune, pretrain
from tokenization import ScBertTokenizer
from tokenization.data import to_dataset, to_iterable_dataset
from tokenization.reading import ScBertReadingArguments, takes_reading_options

GENES = [f"GENE{j}" for j in range(12)]
READING_COMMANDS = {"annotate": annotate, "embed": embed, "pretrain": pretrain, "finetune": finetune}


class Reached(Exception):
    """Raised by a stand-in to stop a run once the value under test has been seen."""


def sample_values() -> dict[str, typing.Any]:
    """A distinctive value for every reading option, by its type (so options added later are covered too)."""
    hints = typing.get_type_hints(ScBertReadingArguments)
    values = {}
    for field in dataclasses.fields(ScBertReadingArguments):
        kinds = set(typing.get_args(hints[field.name])) or {hints[field.name]}
        if bool in kinds:
            values[field.name] = True
        elif int in kinds:
            values[field.name] = 7
        elif float in kinds:
            values[field.name] = 0.25
        else:
            values[field.name] = f"{field.name}-value"
    return values


def as_argv(values: dict[str, typing.Any], *, hyphens: bool) -> list[str]:
    argv = []
    for name, value in values.items():
        argv += [
            "--" + (name.replace("_", "-") if hyphens else name),
            str(value).lower() if value is True else str(value),
        ]
    return argv


def make_adata(n_cells: int = 12) -> ad.AnnData:
    rng = np.random.default_rng(0)
    return ad.AnnData(
        X=sp.csr_matrix(rng.poisson(3.0, size=(n_cells, len(GENES))).astype(np.float32)),
        obs=pd.DataFrame({"cell_type": rng.choice(["B", "T"], n_cells)}, index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=GENES),
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("annotator")
    save_tiny_annotator(path, GENES)
    return path


def option_names(parser) -> dict[str, str]:
    """Every long option string of a parser (normalised to underscores) -> the dest it sets."""
    names = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                names[option[2:].replace("-", "_")] = action.dest
    return names


@pytest.mark.parametrize("command", sorted(READING_COMMANDS))
def test_every_reading_option_is_a_keyword_and_an_option_with_the_same_default(command):
    parameters = inspect.signature(READING_COMMANDS[command]).parameters
    parser = command_parser(command)
    defaults = {action.dest: action.default for action in parser._actions}
    for field in dataclasses.fields(ScBertReadingArguments):
        assert parameters[field.name].kind is inspect.Parameter.KEYWORD_ONLY, (command, field.name)
        assert parameters[field.name].default == field.default, (command, field.name)
        assert option_names(parser).get(field.name) == field.name, f"scbert {command} lacks --{field.name}"
        assert defaults[field.name] == field.default, (command, field.name)


def test_a_misspelt_reading_option_is_refused_by_name(model_dir):
    with pytest.raises(TypeError, match=r"input_kidn.*input_kind"):
        annotate(make_adata(), str(model_dir), input_kidn="counts")
    with pytest.raises(TypeError, match="unexpected keyword"):
        ScBertReadingArguments.from_kwargs({"layers": "counts"}, caller="embed")


@pytest.fixture
def stop_at_the_tokenizer(monkeypatch):
    """Record the reading options the tokenizer's chunked encoder receives (by name or as ``reading=``), then stop."""
    seen = {}

    def iter_encoded(self, data, *, reading=None, **kwargs):
        seen.update(kwargs)
        if reading is not None:
            seen.update(reading.tokenizer_kwargs())
        raise Reached

    monkeypatch.setattr(ScBertTokenizer, "iter_encoded", iter_encoded)
    monkeypatch.setattr(ScBertTokenizer, "align", lambda self, *args, **kwargs: None)
    return seen


@pytest.mark.parametrize("command", sorted(READING_COMMANDS))
def test_python_functions_hand_every_reading_option_to_the_tokenizer(
    command, model_dir, tmp_path, stop_at_the_tokenizer
):
    values = sample_values()
    adata = make_adata()
    if command in ("annotate", "embed"):
        call = lambda: READING_COMMANDS[command](adata, str(model_dir), progress=False, **values)  # noqa: E731
    else:
        arguments = TrainingArguments(str(tmp_path / "run"), report_to=[], use_cpu=True)
        labels = {"label_key": "cell_type"} if command == "finetune" else {}
        call = lambda: READING_COMMANDS[command](  # noqa: E731
            adata, training_args=arguments, encode_kwargs={"cache_dir": str(tmp_path / "c")}, **labels, **values
        )
    with pytest.raises(Reached):
        call()
    assert {name: stop_at_the_tokenizer[name] for name in values} == values


def test_reading_options_in_encode_kwargs_still_work_but_not_twice(tmp_path, stop_at_the_tokenizer):
    arguments = TrainingArguments(str(tmp_path / "run"), report_to=[], use_cpu=True)
    with pytest.raises(Reached):
        pretrain(make_adata(), training_args=arguments, encode_kwargs={"layer": "L", "cache_dir": str(tmp_path)})
    assert stop_at_the_tokenizer["layer"] == "L"
    with pytest.raises(ValueError, match="once"):
        pretrain(make_adata(), training_args=arguments, encode_kwargs={"layer": "L"}, layer="M")


@pytest.mark.parametrize("hyphens", [False, True])
@pytest.mark.parametrize("command", sorted(READING_COMMANDS))
def test_commands_hand_every_reading_option_on(command, hyphens, model_dir, tmp_path, monkeypatch):
    """`scbert annotate|embed|pretrain|finetune --<option> VALUE` reaches the Python function, in both spellings."""
    values = sample_values()
    seen = {}

    def stand_in(*args, **kwargs):
        seen.update(kwargs.pop("encode_kwargs", None) or {})
        seen.update(kwargs)
        raise Reached

    path = tmp_path / "cells.h5ad"
    make_adata().write_h5ad(path)
    if command in ("annotate", "embed"):
        # `scbert annotate` takes its result (for the CSV) from predict_cell_types, which annotate wraps.
        function = {"annotate": "predict_cell_types", "embed": "embed"}[command]
        monkeypatch.setattr(annotate_module, function, stand_in)
        argv = [command, "--model", str(model_dir), "--input", str(path), "--output", str(tmp_path / "out.h5ad")]
    else:
        monkeypatch.setattr(training_module, command, stand_in)
        argv = [command, "--train_file", str(path), "--output_dir", str(tmp_path / "run")]
        argv += ["--model_name_or_path", str(model_dir), "--use_cpu", "--report_to", "none"]
        argv += ["--label_key", "cell_type"] if command == "finetune" else []
    with pytest.raises(Reached):
        cli_main([*argv, *as_argv(values, hyphens=hyphens)])
    assert {name: seen[name] for name in values} == values


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_every_command_has_both_spellings(command):
    parser = command_parser(command)
    checked = 0
    for action in parser._actions:
        for option in action.option_strings:
            if not option.startswith("--"):
                continue
            stem = option[2:]
            for spelling in (f"--{stem.replace('-', '_')}", f"--{stem.replace('_', '-')}"):
                assert spelling in action.option_strings, f"scbert {command}: {option} lacks the spelling {spelling}"
            checked += "_" in stem or "-" in stem
    assert checked  # every command has options of more than one word


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["convert", "--checkpoint", "c.pth", "--output", "o", "--layer_norm_eps", "1e-6"], "layer_norm_eps", 1e-6),
        (["convert", "--checkpoint", "c.pth", "--output", "o", "--trust_checkpoint"], "trust_checkpoint", True),
        (["push", "--model", "m", "--repo_id", "a/b", "--commit_message", "hi"], "commit_message", "hi"),
        (["annotate", "--model", "m", "--input", "i", "--output", "o", "--key_added", "k"], "key_added", "k"),
        (
            ["annotate", "--model", "m", "--input", "i", "--output", "o", "--unassigned-threshold", "0.4"],
            "threshold",
            0.4,
        ),
        (["embed", "--model", "m", "--input", "i", "--output", "o", "--batch_size", "4"], "batch_size", 4),
    ],
)
def test_underscore_and_hyphen_spellings_parse_alike(argv, dest, value):
    from modeling_scbert.cli import build_parser

    def respell(token: str, old: str, new: str) -> str:
        return "--" + token[2:].replace(old, new) if token.startswith("--") else token

    other = [respell(token, "_", "-") for token in argv]
    if other == argv:
        other = [respell(token, "-", "_") for token in argv]
    assert other != argv
    first, second = build_parser().parse_args(argv), build_parser().parse_args(other)
    assert getattr(first, dest) == getattr(second, dest) == value


# The tokenizer and the datasets take the reading options by name or as one object, documented from the fields.
TOKENIZATION_READERS = {
    "ScBertTokenizer.__call__": ScBertTokenizer.__call__,
    "ScBertTokenizer.iter_encoded": ScBertTokenizer.iter_encoded,
    "to_dataset": to_dataset,
    "to_iterable_dataset": to_iterable_dataset,
}


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", sorted(TOKENIZATION_READERS))
def test_tokenization_entry_points_take_every_reading_option_and_document_it_from_the_field(name):
    function = TOKENIZATION_READERS[name]
    parameters = inspect.signature(function).parameters
    doc = words(function.__doc__)
    assert "{reading_options}" not in doc
    assert parameters["reading"].kind is inspect.Parameter.KEYWORD_ONLY
    for field in dataclasses.fields(ScBertReadingArguments):
        assert parameters[field.name].kind is inspect.Parameter.KEYWORD_ONLY, (name, field.name)
        assert parameters[field.name].default == field.default, (name, field.name)
        assert f" {field.name} {words(field.metadata['help'])}" in doc, (name, field.name)


def test_align_documents_only_the_reading_options_it_takes():
    doc = words(ScBertTokenizer.align.__doc__)
    for field in dataclasses.fields(ScBertReadingArguments):
        taken = field.name in inspect.signature(ScBertTokenizer.align).parameters
        assert (words(field.metadata["help"]) in doc) is taken, field.name
    assert {"gene_key", "synonyms", "use_raw"} <= set(inspect.signature(ScBertTokenizer.align).parameters)


def test_a_docstring_without_the_placeholder_is_left_as_it_is():
    def function(adata, **read_options):
        """Do something.

        Parameters
        ----------
        **read_options
            Every field of ScBertReadingArguments.
        """

    text = function.__doc__
    assert takes_reading_options(function).__doc__ == text


def test_the_options_by_name_or_as_one_object_give_the_same_tokens(tmp_path):
    adata = make_adata()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(adata.X.shape, dtype=np.float32)
    tokenizer = ScBertTokenizer(GENES)
    reading = ScBertReadingArguments(layer="counts", min_genes=3)
    by_name = tokenizer(adata, layer="counts", min_genes=3)["input_ids"]
    np.testing.assert_array_equal(tokenizer(adata, reading=reading)["input_ids"], by_name)
    chunks = list(tokenizer.iter_encoded(adata, reading=reading, batch_size=5))
    assert [(start, end) for start, end, _ in chunks] == [(0, 5), (5, 10), (10, 12)]
    np.testing.assert_array_equal(
        sp.vstack([tokens for _, _, tokens in chunks]).toarray(), by_name[:, :-1].astype(np.uint8)
    )
    dataset = to_dataset(adata, tokenizer=tokenizer, reading=reading, cache_dir=tmp_path)
    assert dataset[0]["bins"] == list(by_name[0][by_name[0] > 0])
    streamed = next(iter(to_iterable_dataset(adata, tokenizer=tokenizer, reading=reading)))
    assert list(streamed["bins"]) == dataset[0]["bins"]


@pytest.mark.parametrize("name", sorted(TOKENIZATION_READERS))
def test_options_given_both_ways_or_misspelt_are_refused_by_name(name):
    tokenizer = ScBertTokenizer(GENES)
    call = {
        "ScBertTokenizer.__call__": lambda **kw: tokenizer(make_adata(), **kw),
        "ScBertTokenizer.iter_encoded": lambda **kw: tokenizer.iter_encoded(make_adata(), **kw),
        "to_dataset": lambda **kw: to_dataset(make_adata(), tokenizer=tokenizer, **kw),
        "to_iterable_dataset": lambda **kw: to_iterable_dataset(make_adata(), tokenizer=tokenizer, **kw),
    }[name]
    with pytest.raises(TypeError, match=r"reading=.*\['layer'\].*one way"):
        call(reading=ScBertReadingArguments(), layer="counts")
    with pytest.raises(TypeError, match=r"\['layers'\].*'layer'"):
        call(layers="counts")
    with pytest.raises(TypeError, match="ScBertReadingArguments"):
        call(reading={"layer": "counts"})


def test_a_batch_size_below_one_is_refused_when_iter_encoded_is_called():
    with pytest.raises(ValueError, match="batch_size must be a positive number of cells"):
        ScBertTokenizer(GENES).iter_encoded(make_adata(), batch_size=0)
