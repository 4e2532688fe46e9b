"""The module paths of 0.1 keep working for one release, each with a FutureWarning naming the new place; the root's
verbs stay verbs (tokenization/_imports.py)."""

import importlib
import json
import subprocess
import sys

import pytest

OLD_PATHS = {
    "modeling_scbert.annotate": "annotate",
    "modeling_scbert.training_cli": "ScBertFinetuningArguments",
    "modeling_scbert.trainer_plugins": "compute_classification_metrics",
    "modeling_scbert.model_card": "render_model_card",
    "modeling_scbert.datasets": "load_kang2018",
    "modeling_scbert.reading": "ScBertReadingArguments",
    "tokenization.cell_encoding": "ScBertTokenizer",
    "tokenization.collators": "DataCollatorForCellClassification",
    "tokenization.input_kinds": "detect_input_kind",
}


def test_every_old_module_path_imports_with_a_warning_naming_the_new_place():
    # A fresh interpreter, so that no test before has imported a stand-in already (it warns once, at import).
    code = (
        "import json, warnings\n"
        "found = {}\n"
        f"for old, name in {OLD_PATHS!r}.items():\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        value = getattr(__import__(old, fromlist=[name]), name)\n"
        "    warned = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]\n"
        "    found[old] = [getattr(value, '__module__', ''), warned]\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for old, (module, warned) in found.items():
        assert module != old and any(f"{old} has moved" in message for message in warned), old


def test_the_old_module_path_of_a_verb_leaves_the_verb_in_place():
    import modeling_scbert

    with pytest.warns(FutureWarning, match="modeling_scbert.annotate has moved"):
        importlib.import_module("modeling_scbert.annotate")
    assert callable(modeling_scbert.annotate) and modeling_scbert.annotate.__name__ == "annotate"
    from modeling_scbert.annotate import annotate  # the stand-in module, as 0.1 code wrote it

    assert annotate is modeling_scbert.annotate


def test_names_a_module_gave_before_it_became_a_package_still_resolve_with_a_warning():
    from modeling_scbert import hub, training

    with pytest.warns(FutureWarning, match="modeling_scbert.hub.ScBertTrainer has moved"):
        assert hub.ScBertTrainer.__name__ == "ScBertTrainer"
    with pytest.warns(FutureWarning, match="modeling_scbert.training.ScBertReadingArguments has moved"):
        assert training.ScBertReadingArguments.__module__ == "tokenization.reading"
    assert training.finetune.__module__ == "modeling_scbert.training.workflows"  # the package's own names: no warning


def test_a_name_nothing_defines_is_an_attribute_error_naming_the_new_places():
    from modeling_scbert import trainer_plugins  # noqa: F401  (the stand-in, imported as 0.1 code did)

    stand_in = sys.modules["modeling_scbert.trainer_plugins"]
    with pytest.raises(AttributeError, match="modeling_scbert.training.metrics"):
        _ = stand_in.no_such_name
