"""Every option an error message names exists, under that name, where the user met the error.

Two checks:

- a walk over the error paths: a registry of scenarios (bad input, bad options) triggers each error through the
  Python function and through the ``scbert`` command that wraps it, and every option the message names must be an
  argument of that function, or an option of that command; a new error is covered by adding a scenario;
- a scan of the source: every ``raise`` in the modules users call names only options that exist somewhere, so a
  message naming an option that was renamed or never existed fails even before it has a scenario.

What counts as naming an option (:func:`named_options`): ``--flag`` (a command's option), ``name=`` and
```name``` (a Python argument; on the command line, the option of that name, in either spelling), a bare
``multi_word_name`` that is an option of some entry point, and ``function(..., name=...)``, which names an argument
of that other function (checked against it).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import io
import re
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import save_tiny_annotator
from transformers import TrainingArguments

from modeling_scbert import ScBertForSequenceClassification
from modeling_scbert.annotation.annotate import annotate, embed
from modeling_scbert.cli import COMMANDS, command_parser
from modeling_scbert.cli import main as cli_main
from modeling_scbert.convert_scbert_original_checkpoint import convert_checkpoint
from modeling_scbert.hub.push import push_model_folder
from modeling_scbert.training.workflows import finetune, pretrain
from tokenization import ScBertTokenizer
from tokenization.data import to_dataset

ROOT = Path(__file__).resolve().parents[1]
GENES = [f"GENE{j}" for j in range(12)]
TINY = "hidden_size=16,num_hidden_layers=2,num_attention_heads=2,head_dim=8,intermediate_size=32,num_random_features=8"
PYTHON_FUNCTIONS: dict[str, Callable] = {
    "annotate": annotate,
    "embed": embed,
    "finetune": finetune,
    "pretrain": pretrain,
    "convert": convert_checkpoint,
    "push": push_model_folder,
}
# Functions a message may name explicitly, as in "build it with to_dataset(..., label_names=...)".
NAMED_FUNCTIONS: dict[str, Callable] = {"to_dataset": to_dataset, "ScBertTokenizer": ScBertTokenizer}
TRAINING_ARGUMENTS = {f.name for f in dataclasses.fields(TrainingArguments)}
# Options that exist under a name that means something else: a message about classes that sends the user to them
# names an option that does not do what it says. (TrainingArguments.label_names lists the batch keys holding labels.)
MISLEADING = {"label_names"}


# ---------------------------------------------------------------------------------------------------------------------
# What a message names
# ---------------------------------------------------------------------------------------------------------------------


def python_options(entry: str) -> set[str]:
    names = set(inspect.signature(PYTHON_FUNCTIONS[entry]).parameters)
    if entry in ("pretrain", "finetune"):
        names |= TRAINING_ARGUMENTS  # set through training_args=
    return names - MISLEADING


def cli_options(command: str) -> set[str]:
    """Option names of a command, normalised to underscores (``--gene-key`` and ``--gene_key`` -> ``gene_key``)."""
    parser = command_parser(command)
    names = {
        option[2:].replace("-", "_")
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    }
    return names - MISLEADING


def _vocabulary() -> set[str]:
    names = set()
    for entry in PYTHON_FUNCTIONS:
        names |= python_options(entry)
    for command in COMMANDS:
        names |= cli_options(command)
    for function in NAMED_FUNCTIONS.values():
        names |= set(inspect.signature(function).parameters)
    return {name for name in names if "_" in name.strip("_")}


VOCABULARY = _vocabulary()
_START = r"(?<![^\s(])"  # a name starts a word: after a space, an opening parenthesis or the start
CALL = re.compile(r"([A-Za-z_][\w.]*)\(([^()]*)\)")
FLAG = re.compile(_START + r"`?--([A-Za-z][\w-]*)")
KEYWORD = re.compile(_START + r"`?([A-Za-z_]\w*)=(?!=|value\b)")  # not the placeholder "key=value"
BACKTICKED = re.compile(r"`([A-Za-z_]\w*)`")
BARE = re.compile(_START + r"([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?=[\s.,;:)]|$)")


def named_options(message: str) -> list[tuple[str, str, str | None]]:
    """``(form, name, function)`` for every option a message names; ``function`` for ``f(..., name=...)``."""
    found: list[tuple[str, str, str | None]] = []
    for call in CALL.finditer(message):
        for name in re.findall(r"([A-Za-z_]\w*)=(?!=)", call.group(2)):
            found.append(("keyword", name, call.group(1).rsplit(".", 1)[-1]))
    message = CALL.sub(" ", message)
    found += [("flag", name.replace("-", "_"), None) for name in FLAG.findall(message)]
    message = FLAG.sub(" ", message)
    found += [("keyword", name, None) for name in KEYWORD.findall(message)]
    found += [("keyword", name, None) for name in BACKTICKED.findall(message)]
    found += [("keyword", name, None) for name in BARE.findall(message) if name in VOCABULARY]
    return found


def missing_options(message: str, *, entry: str, surface: str) -> list[str]:
    """The options a message names that do not exist where it was raised (``surface``: python or cli)."""
    problems = []
    for form, name, function in named_options(message):
        if function is not None:
            if function not in NAMED_FUNCTIONS:
                problems.append(f"{function}(..., {name}=...): register {function} in NAMED_FUNCTIONS")
            elif name not in inspect.signature(NAMED_FUNCTIONS[function]).parameters:
                problems.append(f"{function}() has no argument {name}")
        elif form == "flag" or surface == "cli":
            if name not in cli_options(entry):
                problems.append(f"scbert {entry} has no option --{name}")
        elif name not in python_options(entry):
            problems.append(f"{entry}() has no argument {name}")
    return problems


def test_named_options_reads_every_form():
    message = (
        "Pass input_kind='counts' or `layer`, lower min_gene_overlap (now 0.5), use --gene-key, build it with "
        "to_dataset(..., label_names=...); e.g. 'hidden_size=64,num_hidden_layers=2' or adata.var_names."
    )
    assert sorted(named_options(message)) == [
        ("flag", "gene_key", None),
        ("keyword", "input_kind", None),
        ("keyword", "label_names", "to_dataset"),
        ("keyword", "layer", None),
        ("keyword", "min_gene_overlap", None),
    ]


def test_a_message_naming_an_option_that_does_not_exist_is_caught():
    # The message of case 08 before the fix: finetune() has no label_names, and scbert annotate had no --input_kind.
    assert missing_options("labels not in label_names; add them to label_names.", entry="finetune", surface="python")
    assert missing_options("pass preset='full'", entry="finetune", surface="python") == []
    assert missing_options("pass synonyms= a table", entry="annotate", surface="cli") == []
    assert missing_options("pass copy=True", entry="annotate", surface="cli") == [
        "scbert annotate has no option --copy"
    ]
    assert missing_options("pass --overwrite", entry="push", surface="python")
    assert missing_options("pass label_name=", entry="annotate", surface="python")


# ---------------------------------------------------------------------------------------------------------------------
# The scenarios
# ---------------------------------------------------------------------------------------------------------------------


def make_adata(n_cells: int = 16, genes=GENES, seed: int = 0, lam: float = 3.0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    return ad.AnnData(
        X=sp.csr_matrix(rng.poisson(lam, size=(n_cells, len(genes))).astype(np.float32)),
        obs=pd.DataFrame(
            {"cell_type": [("B", "T")[i % 2] for i in range(n_cells)]}, index=[f"c{i}" for i in range(n_cells)]
        ),
        var=pd.DataFrame(index=list(genes)),
    )


def save_model(path: Path, classes=("B", "T")) -> str:
    return str(save_tiny_annotator(path, GENES, classes))


def corrected_counts() -> ad.AnnData:
    adata = make_adata(lam=60.0)
    adata.X.data *= np.random.default_rng(1).uniform(0.6, 0.95, adata.X.nnz).astype(np.float32)
    return adata


def low_overlap() -> ad.AnnData:
    return make_adata(genes=[*GENES[:2], *(f"OTHER{j}" for j in range(10))])


def scaled_with_counts_layer() -> ad.AnnData:
    adata = make_adata()
    adata.layers["counts"] = adata.X.copy()
    dense = adata.X.toarray()
    adata.X = (dense - dense.mean(0)) / (dense.std(0) + 1)
    return adata


def with_nan() -> ad.AnnData:
    adata = make_adata()
    adata.X = adata.X.toarray()
    adata.X[0, 0] = np.nan
    return adata


def nan_labels() -> ad.AnnData:
    adata = make_adata()
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(object)
    adata.obs.iloc[:3, 0] = np.nan
    return adata


def unseen_types() -> ad.AnnData:
    adata = make_adata(seed=2)
    adata.obs["cell_type"] = ["B", "T", "Platelet", "pDC"] * 4
    return adata


# Reading scenarios: (cells, Python keywords, command-line options, a phrase of the expected message); each runs
# through the four reading commands.
READING = {
    "corrected_counts": (corrected_counts, {}, [], "non-integer values"),
    "low_overlap": (low_overlap, {}, [], "panel genes"),
    "missing_layer": (make_adata, {"layer": "nope"}, ["--layer", "nope"], "adata.layers"),
    "missing_gene_key": (make_adata, {"gene_key": "nope"}, ["--gene_key", "nope"], "adata.var"),
    "scaled_with_counts_layer": (scaled_with_counts_layer, {}, [], "scaled"),
    "nan_values": (with_nan, {}, [], "NaN"),
    "unknown_input_kind": (make_adata, {"input_kind": "normalised"}, ["--input_kind", "normalised"], "input_kind"),
    "missing_synonym_file": (
        make_adata,
        {"synonyms": "no-such-file.tsv"},
        ["--synonyms", "no-such-file.tsv"],
        "no-such-file.tsv",
    ),
}


@dataclasses.dataclass
class Context:
    tmp: Path
    model: str

    def file(self, adata: ad.AnnData, name: str = "cells.h5ad") -> str:
        path = self.tmp / name
        adata.write_h5ad(path)
        return str(path)

    def training_args(self, **overrides) -> TrainingArguments:
        return TrainingArguments(
            str(self.tmp / "run"), report_to=[], use_cpu=True, save_strategy="no", num_train_epochs=1, **overrides
        )

    def python(self, entry: str, adata, **kwargs):
        if entry in ("annotate", "embed"):
            return PYTHON_FUNCTIONS[entry](adata, kwargs.pop("model", self.model), progress=False, **kwargs)
        kwargs.setdefault("encode_kwargs", {"cache_dir": str(self.tmp / "cache")})
        kwargs.setdefault("model", self.model)
        if entry == "finetune":
            kwargs.setdefault("label_key", "cell_type")
            kwargs.setdefault("preset", "full")
        return PYTHON_FUNCTIONS[entry](
            adata, training_args=kwargs.pop("training_args", self.training_args()), **kwargs
        )

    def argv(self, entry: str, path: str, *extra: str, model: bool = True) -> list[str]:
        if entry in ("annotate", "embed"):
            return [entry, "--model", self.model, "--input", path, "--output", str(self.tmp / "out.h5ad"), *extra]
        argv = [entry, "--train_file", path, "--output_dir", str(self.tmp / "run"), "--use_cpu", "--report_to", "none"]
        argv += ["--dataset_cache_dir", str(self.tmp / "cache"), "--num_train_epochs", "1"]
        if model:
            argv += ["--model_name_or_path", self.model]
        if entry == "finetune":
            argv += ["--finetuning_preset", "full"] + ([] if "--label_key" in extra else ["--label_key", "cell_type"])
        return [*argv, *extra]


EXPECTED = {
    "label_column_missing": "is not a column",
    "label_key_not_given": "label_key",
    "labels_missing": "without a label",
    "evaluation_types_unseen": "4 of 'Platelet'",
    "evaluation_types_all_unseen": "nothing is left to evaluate",
    "early_stopping_without_evaluation": "needs evaluation cells",
    "early_stopping_without_best_model": "load_best_model_at_end=True",
    "push_without_license": "license",
    "published_preset_on_one_layer": "second-to-last",
    "unknown_config_field": "hiden_size",
    "resume_without_checkpoint": "no checkpoint",
    "dataset_folder_without_panel": "gene panel",
    "threshold_out_of_range": "[0, 1]",
    "batch_size_zero": "batch_size",
    "output_exists": "already exists",
    "csv_label_column_missing": "not a column",
    "model_without_tokenizer": "No scBERT tokenizer",
    "model_object_without_tokenizer": "tokenizer=",
    "copy_of_backed_cells": "copy=True",
    "ensemble_members_disagree": "different classes",
    "embed_model_folder_missing": "does not exist",
    "checkpoint_missing": "not found",
    "convert_output_exists": "exists",
    "push_without_token": "token",
}


def _scenarios() -> list[tuple[str, str, str, Callable[[Context], object] | None, Callable[[Context], list] | None]]:
    """``(name, entry, phrase, python trigger, command-line argv)``: each trigger must raise, each argv must exit
    with 2, with a message holding the phrase of :data:`EXPECTED` (so a scenario tests the error it is meant to)."""
    scenarios = []
    for name, (cells, keywords, options, expect) in READING.items():
        for entry in ("annotate", "embed", "finetune", "pretrain"):
            scenarios.append(
                (
                    f"{name}-{entry}",
                    entry,
                    expect,
                    lambda c, cells=cells, keywords=keywords, entry=entry: c.python(entry, cells(), **keywords),
                    lambda c, cells=cells, options=options, entry=entry: c.argv(entry, c.file(cells()), *options),
                )
            )
    others = [
        (
            "label_column_missing",
            "finetune",
            lambda c: c.python("finetune", make_adata(), label_key="celltype"),
            lambda c: c.argv("finetune", c.file(make_adata()), "--label_key", "celltype"),
        ),
        (
            "label_key_not_given",
            "finetune",
            lambda c: c.python("finetune", make_adata(), label_key=None),
            lambda c: [t for t in c.argv("finetune", c.file(make_adata())) if t not in ("--label_key", "cell_type")],
        ),
        (
            "labels_missing",
            "finetune",
            lambda c: c.python("finetune", nan_labels()),
            lambda c: c.argv("finetune", c.file(nan_labels())),
        ),
        (
            "evaluation_types_unseen",
            "finetune",
            lambda c: c.python("finetune", make_adata(), eval_data=unseen_types()),
            lambda c: c.argv("finetune", c.file(make_adata()), "--validation_file", c.file(unseen_types(), "ev.h5ad")),
        ),
        (
            "evaluation_types_all_unseen",
            "finetune",
            lambda c: c.python("finetune", make_adata(), eval_data=_only("Platelet"), drop_unseen_labels=True),
            lambda c: c.argv(
                "finetune",
                c.file(make_adata()),
                "--validation_file",
                c.file(_only("Platelet"), "ev.h5ad"),
                "--drop_unseen_labels",
            ),
        ),
        (
            "early_stopping_without_evaluation",
            "finetune",
            lambda c: c.python("finetune", make_adata(), early_stopping_patience=2),
            lambda c: c.argv("finetune", c.file(make_adata()), "--early_stopping_patience", "2"),
        ),
        (
            "early_stopping_without_best_model",
            "finetune",
            lambda c: c.python("finetune", make_adata(), eval_fraction=0.5, early_stopping_patience=2),
            lambda c: c.argv(
                "finetune",
                c.file(make_adata()),
                *("--validation_fraction", "0.5", "--early_stopping_patience", "2"),
                *("--load_best_model_at_end", "false"),
            ),
        ),
        (
            "push_without_license",
            "finetune",
            lambda c: c.python("finetune", make_adata(), training_args=c.training_args(push_to_hub=True)),
            lambda c: c.argv("finetune", c.file(make_adata()), "--push_to_hub"),
        ),
        (
            "published_preset_on_one_layer",
            "finetune",
            lambda c: c.python("finetune", make_adata(), preset="published"),
            lambda c: c.argv("finetune", c.file(make_adata()), "--preset", "published"),
        ),
        (
            "unknown_config_field",
            "pretrain",
            lambda c: c.python("pretrain", make_adata(), model=None, config_overrides="hiden_size=8"),
            lambda c: c.argv("pretrain", c.file(make_adata()), "--config_overrides", "hiden_size=8"),
        ),
        (
            "resume_without_checkpoint",
            "finetune",
            lambda c: c.python("finetune", make_adata(), resume_from_checkpoint=True),
            lambda c: c.argv("finetune", c.file(make_adata()), "--resume_from_checkpoint", "True"),
        ),
        (
            "dataset_folder_without_panel",
            "pretrain",
            None,
            lambda c: c.argv("pretrain", _dataset_folder(c), model=False),
        ),
        (
            "threshold_out_of_range",
            "annotate",
            lambda c: c.python("annotate", make_adata(), unassigned_threshold=1.5),
            lambda c: c.argv("annotate", c.file(make_adata()), "--threshold", "1.5"),
        ),
        (
            "batch_size_zero",
            "annotate",
            lambda c: c.python("annotate", make_adata(), batch_size=0),
            lambda c: c.argv("annotate", c.file(make_adata()), "--batch_size", "0"),
        ),
        ("output_exists", "annotate", None, lambda c: _existing_output(c)),
        (
            "csv_label_column_missing",
            "annotate",
            None,
            lambda c: c.argv("annotate", c.file(make_adata()), "--csv", str(c.tmp / "p.csv"), "--label-key", "x"),
        ),
        (
            "model_without_tokenizer",
            "annotate",
            lambda c: c.python("annotate", make_adata(), model=_bare_model(c)),
            lambda c: [
                "annotate",
                "--model",
                _bare_model(c),
                "--input",
                c.file(make_adata()),
                "--output",
                str(c.tmp / "o.h5ad"),
            ],
        ),
        (
            "model_object_without_tokenizer",
            "annotate",
            lambda c: annotate(make_adata(), ScBertForSequenceClassification.from_pretrained(c.model)),
            None,
        ),
        (
            "copy_of_backed_cells",
            "annotate",
            lambda c: annotate(ad.read_h5ad(c.file(make_adata()), backed="r"), c.model, copy=True, progress=False),
            None,
        ),
        (
            "ensemble_members_disagree",
            "annotate",
            lambda c: c.python("annotate", make_adata(), model=[c.model, _other_classes(c)]),
            lambda c: (
                ["annotate", "--model", c.model, _other_classes(c), "--input", c.file(make_adata())]
                + ["--output", str(c.tmp / "o.h5ad")]
            ),
        ),
        (
            "embed_model_folder_missing",
            "embed",
            lambda c: c.python("embed", make_adata(), model=str(c.tmp / "missing")),
            lambda c: [
                "embed",
                "--model",
                str(c.tmp / "missing"),
                "--input",
                c.file(make_adata()),
                "--output",
                str(c.tmp / "o.h5ad"),
            ],
        ),
        (
            "checkpoint_missing",
            "convert",
            lambda c: convert_checkpoint(c.tmp / "missing.pth", c.tmp / "out"),
            lambda c: ["convert", "--checkpoint", str(c.tmp / "missing.pth"), "--output", str(c.tmp / "out")],
        ),
        (
            "convert_output_exists",
            "convert",
            lambda c: convert_checkpoint(c.tmp / "missing.pth", c.model),
            lambda c: ["convert", "--checkpoint", str(c.tmp / "missing.pth"), "--output", c.model],
        ),
        (
            "push_without_token",
            "push",
            lambda c: push_model_folder(c.model, "my-lab/model", token=False),
            None,
        ),
    ]
    return scenarios + [(name, entry, EXPECTED[name], python, cli) for name, entry, python, cli in others]


def _only(label: str) -> ad.AnnData:
    adata = make_adata(seed=3)
    adata.obs["cell_type"] = label
    return adata


def _dataset_folder(c: Context) -> str:
    folder = c.tmp / "dataset"
    to_dataset(make_adata(), tokenizer=ScBertTokenizer(GENES), output_dir=folder)
    return str(folder)


def _existing_output(c: Context) -> list[str]:
    (c.tmp / "out.h5ad").write_bytes(b"")
    return c.argv("annotate", c.file(make_adata()))


def _bare_model(c: Context) -> str:
    path = c.tmp / "bare"
    ScBertForSequenceClassification.from_pretrained(c.model).save_pretrained(path)
    return str(path)


def _other_classes(c: Context) -> str:
    return save_model(c.tmp / "other", classes=("B", "NK"))


SCENARIOS = _scenarios()
ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError)


@pytest.fixture
def context(tmp_path) -> Context:
    return Context(tmp=tmp_path, model=save_model(tmp_path / "model"))


@pytest.mark.parametrize(
    ("entry", "expect", "trigger"), [pytest.param(e, x, t, id=n) for n, e, x, t, _ in SCENARIOS if t is not None]
)
def test_python_errors_name_only_arguments_of_the_function(entry, expect, trigger, context):
    with pytest.raises(ERRORS) as raised:
        trigger(context)
    message = str(raised.value)
    assert expect in message, message
    assert missing_options(message, entry=entry, surface="python") == [], message


@pytest.mark.parametrize(
    ("entry", "expect", "argv"), [pytest.param(e, x, a, id=n) for n, e, x, _, a in SCENARIOS if a is not None]
)
def test_command_errors_name_only_options_of_the_command(entry, expect, argv, context):
    arguments = argv(context)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(arguments)
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    message = stderr.getvalue().split("error:", 1)[-1].strip()
    assert code == 2 and expect in message, (arguments, stderr.getvalue())
    assert missing_options(message, entry=entry, surface="cli") == [], message


# ---------------------------------------------------------------------------------------------------------------------
# Every raise in the modules users call
# ---------------------------------------------------------------------------------------------------------------------

# Every module of both packages: a module that moves or splits stays scanned.
SCANNED = [*sorted((ROOT / "tokenization").glob("*.py")), *sorted((ROOT / "modeling_scbert").glob("*.py"))]


def _message_text(node: ast.AST) -> str:
    """The literal text of a message expression; interpolated values become ``{}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_message_text(part) if isinstance(part, ast.Constant) else "{}" for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _message_text(node.left) + _message_text(node.right)
    return "{}"


def _raised_messages():
    for path in SCANNED:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                yield f"{path.name}:{node.lineno}", _message_text(node.exc.args[0])


def _public_callables():
    """Every public function, class and public method of the scanned modules."""
    import importlib

    for path in SCANNED:
        module = importlib.import_module(f"{path.parent.name}.{path.stem}")
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(value):
                yield value
            elif inspect.isclass(value):
                yield value
                for member in vars(value).values():
                    member = getattr(member, "__func__", member)
                    if inspect.isfunction(member) and (
                        not member.__name__.startswith("_") or member.__name__ == "__call__"
                    ):
                        yield member


# Names a message may give that belong to the tools around the package: torchrun's flag and environment, the
# keyword of transformers' from_pretrained, and config.json's own field.
OTHER_TOOLS = {"nproc_per_node", "WORLD_SIZE", "LOCAL_RANK", "trust_remote_code", "model_type"}


def test_every_raised_message_names_only_options_that_exist():
    python_names = set(OTHER_TOOLS)
    for entry in PYTHON_FUNCTIONS:
        python_names |= python_options(entry)
    for function in _public_callables():
        python_names.add(function.__name__)  # a message may point at the function to call
        try:
            python_names |= set(inspect.signature(function).parameters)
        except ValueError:  # exception classes: their signature is the builtin one, with no options
            continue
    command_names = set().union(*(cli_options(command) for command in COMMANDS))
    problems = []
    messages = list(_raised_messages())
    assert len(messages) > 50
    for where, text in messages:
        for form, name, function in named_options(text):
            if form == "flag" and name not in command_names | OTHER_TOOLS:
                problems.append(f"{where}: no command has --{name}: {text!r}")
            elif form == "keyword" and function is None and name not in python_names | command_names:
                problems.append(f"{where}: no function or command takes {name}: {text!r}")
    assert problems == [], "\n".join(problems)
