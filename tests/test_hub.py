"""Model cards and Hub publishing, against a Hub endpoint on 127.0.0.1 that the test starts (never the internet).

``HF_ENDPOINT`` is read when ``huggingface_hub`` is imported, so client code that talks to the local Hub runs in a
subprocess with its own environment; everything in this process stays offline (``HF_HUB_OFFLINE=1``).
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import FakeHub
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from modeling_scbert import ScBertConfig, ScBertForMaskedLM, ScBertForSequenceClassification, ScBertTokenizer
from modeling_scbert.cli import main as cli_main
from modeling_scbert.hub.card import find_placeholders, render_model_card, validate_model_card, write_model_card
from modeling_scbert.hub.card_data import ModelCardError, ScBertCardData
from modeling_scbert.hub.push import UploadPlan, check_repo_id, push_model_folder

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LABELS = ["B cell", "T cell", "NK cell"]
FACTS = {
    "license": "apache-2.0",
    "label_counts": {"B cell": 40, "T cell": 120, "NK cell": 15},
    "training_data": {"name": "synthetic PBMC-like cells", "num_cells": 175},
    "hyperparameters": {"learning rate": 1e-4, "epochs": 3},
    "evaluation": {"dataset_name": "synthetic PBMC-like cells", "split": "test", "num_cells": 44},
}
METRICS = {
    "eval_loss": 0.41,
    "eval_accuracy": 0.8636,
    "eval_macro_f1": 0.7712,
    "eval_f1_B cell": 0.9,
    "eval_f1_T cell": 0.88,
    "eval_f1_NK cell": 0.53,
    "eval_support_NK cell": 4,
}


def tiny_config(**overrides) -> ScBertConfig:
    values = {
        "num_genes": 12,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "head_dim": 8,
        "intermediate_size": 64,
        "num_random_features": 24,
        "classifier_hidden_sizes": [16, 8],
        "num_labels": 3,
        "id2label": dict(enumerate(LABELS)),
        "label2id": {label: i for i, label in enumerate(LABELS)},
    }
    values.update(overrides)
    return ScBertConfig(**values)


def tiny_tokenizer(num_genes: int = 12, offset: int = 0) -> ScBertTokenizer:
    return ScBertTokenizer([f"GENE{i + offset}" for i in range(num_genes)])


def make_annotator(folder: Path, *, seed: int = 0, tokenizer: bool = True, metrics: bool = True, **overrides) -> Path:
    torch.manual_seed(seed)
    ScBertForSequenceClassification(tiny_config(**overrides)).eval().save_pretrained(folder)
    if tokenizer:
        tiny_tokenizer().save_pretrained(folder)
    if metrics:
        (folder / "eval_results.json").write_text(json.dumps(METRICS))
    return folder


# ------------------------------------------------------------------------------------------------------- the cards
def test_annotator_card_is_filled_from_the_facts(tmp_path):
    folder = make_annotator(tmp_path / "annotator")
    text = write_model_card(folder, FACTS).read_text()

    card = ModelCard(text)
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert {"single-cell", "scRNA-seq", "cell-type-annotation", "scbert", "performer", "biology"} <= set(meta["tags"])
    assert meta["scbert"]["labels"] == LABELS and meta["scbert"]["num_labels"] == 3
    assert meta["scbert"]["panel_hash"] == tiny_tokenizer().panel_hash
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"accuracy": 0.8636, "f1": 0.7712}  # read from eval_results.json, not invented
    assert "| 2 | NK cell | 15 |" in card.text  # training cells per label
    assert "| NK cell | - | - | 0.530 | 4 |" in card.text  # per-class metrics
    assert tiny_tokenizer().panel_hash in card.text
    assert "Not for clinical or diagnostic use" in card.text
    assert "trust_remote_code=True" in card.text and "Nat Mach Intell" in card.text
    assert "| learning rate | 0.0001 |" in card.text
    assert find_placeholders(text) == []
    # The facts are kept next to the model, so a later `scbert push` renders the same card.
    assert json.loads((folder / "scbert_card.json").read_text())["label_counts"]["NK cell"] == 15
    assert write_model_card(folder).read_text() == text


def test_missing_facts_are_left_out_with_their_section(tmp_path):
    folder = make_annotator(tmp_path / "bare", metrics=False)
    text = write_model_card(folder, {"license": "apache-2.0"}).read_text()
    card = ModelCard(text)
    assert "## Evaluation" not in text and "## Training data and procedure" not in text
    assert "model-index" not in text and card.data.eval_results is None
    assert "not recorded" in text  # the label table says counts are unknown rather than inventing them
    assert "## Input contract" in text and "## Labels" in text
    assert find_placeholders(text) == []


def test_per_class_metrics_are_read_from_the_finetune_classification_report(tmp_path):
    folder = make_annotator(tmp_path / "model", metrics=False)
    report = {label: {"precision": 0.5, "recall": 0.25, "f1-score": 1 / 3, "support": 4.0} for label in LABELS}
    report.update({"accuracy": 0.75, "macro avg": {"f1-score": 0.6, "support": 12.0}})
    (folder / "classification_report.json").write_text(json.dumps(report))
    text = write_model_card(folder, {"license": "apache-2.0"}).read_text()
    assert "| T cell | 0.500 | 0.250 | 0.333 | 4 |" in text
    assert "| accuracy | 0.750 |" in text and "| macro-F1 | 0.600 |" in text


def test_backbone_card_and_converted_checkpoint_provenance(tmp_path):
    folder = tmp_path / "backbone"
    torch.manual_seed(0)
    ScBertForMaskedLM(tiny_config(num_labels=2, id2label=None, label2id=None)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    sha = "ab" * 32
    text = write_model_card(
        folder, {"provenance": {"source_file": "panglao_pretrain.pth", "sha256": sha, "layout": "pretraining"}}
    ).read_text()
    meta = ModelCard(text).data.to_dict()
    assert meta["license"] == "other"  # the weights' own terms apply
    assert meta["scbert"]["source_sha256"] == sha and "labels" not in meta["scbert"]
    assert f"SHA-256 of the source file: `{sha}`" in text
    assert "the terms under which the original checkpoint was published apply" in text
    assert "A pretrained scBERT backbone" in text and "AutoModelForMaskedLM" in text


def test_validation_catches_a_label_count_that_differs_from_the_head(tmp_path):
    three = make_annotator(tmp_path / "three")
    four = make_annotator(
        tmp_path / "four",
        num_labels=4,
        id2label=dict(enumerate([*LABELS, "Monocyte"])),
        label2id={label: i for i, label in enumerate([*LABELS, "Monocyte"])},
    )
    card = write_model_card(three, {"license": "apache-2.0"}).read_text()
    validate_model_card(card, three)
    with pytest.raises(ModelCardError, match="lists 3 labels but the model head has num_labels=4"):
        validate_model_card(card, four)


def test_validation_catches_a_panel_hash_that_differs_from_the_tokenizer(tmp_path):
    folder = make_annotator(tmp_path / "model")
    card = write_model_card(folder, {"license": "apache-2.0"}).read_text()
    tiny_tokenizer(offset=100).save_pretrained(folder)  # another panel of the same size
    with pytest.raises(ModelCardError, match="panel hash"):
        validate_model_card(card, folder)


@pytest.mark.parametrize("placeholder", ["{{ accuracy }}", "{% if x %}", "TODO", "<model name>", "accuracy: None"])
def test_validation_catches_placeholders(tmp_path, placeholder):
    folder = make_annotator(tmp_path / "model")
    card = write_model_card(folder, {"license": "apache-2.0"}).read_text()
    with pytest.raises(ModelCardError, match="placeholder|template syntax|to-do|empty value"):
        validate_model_card(card.replace("## Labels", f"## Labels\n\n{placeholder}\n"), folder)


def test_a_template_naming_a_missing_fact_is_refused(tmp_path):
    folder = make_annotator(tmp_path / "model")
    template = tmp_path / "bad.md.j2"
    template.write_text("# {{ model_name }}\n\nTrained on {{ training_data.name }} by {{ author_email }}.\n")
    data = ScBertCardData.from_model_folder(folder, FACTS)
    with pytest.raises(ModelCardError, match="refers to a fact that does not exist.*author_email"):
        render_model_card(data, template=template)


def test_unknown_fact_names_are_refused(tmp_path):
    folder = make_annotator(tmp_path / "model")
    with pytest.raises(ModelCardError, match="Unknown model-card facts"):
        write_model_card(folder, {"licence": "mit"})
    with pytest.raises(ModelCardError, match="Unknown keys \\['hubid'\\]"):
        write_model_card(folder, {"license": "mit", "training_data": {"hubid": "x/y"}})


def test_the_numpy_tokenizer_in_the_card_matches_the_package(tmp_path):
    """The card documents the binning rule for users without the package; it must be the package's rule."""
    folder = make_annotator(tmp_path / "model")
    text = write_model_card(folder, {"license": "apache-2.0"}).read_text()
    snippet = re.search(r"```python\n(import json\nimport numpy as np\n.*?)```", text, re.DOTALL).group(1)
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the snippet reads "./model/..."
    try:
        exec(snippet, namespace)
    finally:
        os.chdir(cwd)
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(0.5, 4.0, size=(40, 15))).astype(np.float32)
    counts[3] = 0  # a cell without counts
    genes = [f"GENE{i}" for i in range(3, 18)]  # three panel genes missing, three extra genes
    expected = tiny_tokenizer()(counts, gene_names=genes, input_kind="counts", min_gene_overlap=0)["input_ids"]
    np.testing.assert_array_equal(namespace["tokenize"](counts, genes), expected)


# ------------------------------------------------------------------------------------------------ bad input, offline
def test_repo_ids_of_the_wrong_form_are_refused():
    assert check_repo_id("my-lab/scbert-pbmc") == "my-lab/scbert-pbmc"
    for bad in ["scbert-pbmc", "a/b/c", "org/na me", "org/x--y", "/name", "org/", ""]:
        with pytest.raises(ValueError, match="namespace/name|not valid"):
            check_repo_id(bad)


def test_push_refuses_a_folder_without_a_tokenizer(tmp_path):
    folder = make_annotator(tmp_path / "no-tokenizer", tokenizer=False)
    with pytest.raises(FileNotFoundError, match="has no tokenizer.*tokenizer.save_pretrained"):
        push_model_folder(folder, "org/model", token="hf_fake")


def test_push_refuses_a_bad_repo_id_before_anything_else(tmp_path):
    with pytest.raises(ValueError, match="not of the form 'namespace/name'"):
        push_model_folder(tmp_path, "just-a-name", token="hf_fake")


# What people keep beside a model and must never reach the Hub.
SECRET_LOOKING = ["token", "hf_token.txt", "secrets.json", "id_rsa", "credentials", "wandb-metadata.json", "notes.md"]


def model_folder_with_secrets(tmp_path: Path) -> tuple[Path, set[str]]:
    """An annotator folder as finetune leaves it, plus secret-looking files; and the names a push may upload."""
    from tokenization.pipeline_scbert import save_pipeline_code

    folder = make_annotator(tmp_path / "model")
    code = {Path(path).name for path in save_pipeline_code(folder)}
    (folder / "classification_report.json").write_text("{}")
    for name in SECRET_LOOKING:
        (folder / name).write_text(f"hf_secret_{name}")
    (folder / ".env").write_text("HF_TOKEN=hf_secret")
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "trainer_state.json").write_text('{"best_model_checkpoint": "/home/someone/run"}')
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "config.json").write_text("{}")
    outside = tmp_path / "outside_secret.txt"
    outside.write_text("hf_secret_outside")
    (folder / "notes.txt").symlink_to(outside)
    allowed = code | {"model.safetensors", "genes.txt", "tokenizer_config.json", "eval_results.json"}
    allowed |= {
        "classification_report.json",
        "README.md",
        "scbert_card.json",
        "modeling_scbert.py",
        "configuration_scbert.py",
    }
    assert {"config.json", "modeling_scbert.py", "configuration_scbert.py", "pipeline_scbert.py"} <= allowed
    return folder, allowed


def test_a_dry_run_lists_the_model_files_and_writes_and_sends_nothing(tmp_path, capsys):
    folder, allowed = model_folder_with_secrets(tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    plan = push_model_folder(folder, "org/model", facts={"license": "apache-2.0"}, token=False, dry_run=True)
    assert isinstance(plan, UploadPlan) and set(plan.files) == allowed
    assert set(SECRET_LOOKING) | {".env", "training_args.bin", "trainer_state.json", "notes.txt", "checkpoint-5/"} == (
        set(plan.left_out)
    )
    assert cli_main(["push", "--model", str(folder), "--repo-id", "org/model", "--dry-run", "--license", "mit"]) == 0
    out = capsys.readouterr().out
    assert "  model.safetensors\n" in out and "id_rsa" in out.split("left out:")[1] and "  id_rsa" not in out
    assert sorted(p.name for p in folder.iterdir()) == before  # no card written


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "genes.txt"])
def test_push_refuses_a_model_file_that_links_outside_the_folder(tmp_path, name, capsys):
    folder = make_annotator(tmp_path / "model")
    outside = tmp_path / f"elsewhere_{name}"
    (folder / name).rename(outside)
    (folder / name).symlink_to(outside)
    with pytest.raises(
        ValueError, match=f"{name}' is a symbolic link to .*elsewhere_{name}.*outside the model folder"
    ):
        push_model_folder(folder, "org/model", token="hf_fake", dry_run=True)
    assert cli_main(["push", "--model", str(folder), "--repo-id", "org/model", "--token", "hf_x"]) == 2
    assert "outside the model folder" in capsys.readouterr().err
    assert not (folder / "README.md").exists()  # refused before the card is written
    # A link that stays inside the folder is a file of the model like any other.
    (folder / name).unlink()
    outside.rename(folder / f"real_{name}")
    (folder / name).symlink_to(folder / f"real_{name}")
    assert name in push_model_folder(folder, "org/model", facts={"license": "mit"}, token=False, dry_run=True).files


# -------------------------------------------------------------------------------------------- against the local Hub
def test_push_uploads_the_model_files_and_nothing_else(tmp_path, hub):
    folder, allowed = model_folder_with_secrets(tmp_path)
    script = f"""
        import json, logging
        from modeling_scbert.hub.push import push_model_folder
        logging.basicConfig(level=logging.WARNING)
        commit = push_model_folder({str(folder)!r}, "my-lab/leak-test", facts={{"license": "apache-2.0"}})
        print(json.dumps({{"commit": commit.oid}}))
    """
    result = run_client(script, hub, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    oid = json.loads(result.stdout.strip().splitlines()[-1])["commit"]
    stored = hub.repos["my-lab/leak-test"].commits[oid].files
    assert set(stored) - {".gitattributes"} == allowed
    assert not [name for name, content in stored.items() if b"hf_secret" in content]
    # What was left out is named, in one log line.
    (line,) = [line for line in result.stderr.splitlines() if "Not uploading" in line]
    assert all(name in line for name in [*SECRET_LOOKING, ".env", "notes.txt", "checkpoint-5/"])
    assert not hub.unhandled, hub.unhandled


def run_client(script: str, hub: FakeHub, tmp_path: Path, *, token: str | None = "hf_test_token", cwd=None):
    """Run client code in a fresh interpreter whose huggingface_hub talks to the local Hub."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_XET="1",  # the local Hub speaks only the regular (inline) upload protocol
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_CACHE=str(tmp_path / "hf_cache"),
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPATH=str(PROJECT_ROOT),
    )
    if token is not None:
        env["HF_TOKEN"] = token
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd or tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result


@pytest.fixture
def hub():
    with FakeHub() as server:
        yield server


def test_push_then_load_anywhere_and_at_a_pinned_revision(tmp_path, hub):
    first = make_annotator(tmp_path / "first", seed=0)
    second = make_annotator(tmp_path / "second", seed=1)
    (tmp_path / "ids.npy").write_bytes(b"")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (3, 13), generator=generator)
    ids[:, -1] = 0
    np.save(tmp_path / "ids.npy", ids.numpy())
    with torch.no_grad():
        expected = {
            name: ScBertForSequenceClassification.from_pretrained(tmp_path / name).eval()(ids).logits.numpy()
            for name in ("first", "second")
        }
    np.save(tmp_path / "first_logits.npy", expected["first"])
    np.save(tmp_path / "second_logits.npy", expected["second"])

    push = f"""
        import json
        from modeling_scbert.hub.push import push_model_folder
        facts = {json.dumps(FACTS)}
        first = push_model_folder({str(first)!r}, "my-lab/annotator", facts=facts)
        second = push_model_folder({str(second)!r}, "my-lab/annotator", facts=facts, commit_message="retrained")
        print(json.dumps({{"first": first.oid, "second": second.oid}}))
    """
    result = run_client(push, hub, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    commits = json.loads(result.stdout.strip().splitlines()[-1])
    # One commit per push: model, tokenizer and card together.
    assert hub.commit_messages("my-lab/annotator") == [
        "retrained",
        "Upload scBERT model, tokenizer and model card",
        "initial commit",
    ]
    stored = hub.repos["my-lab/annotator"].commits[commits["first"]].files
    assert {"config.json", "model.safetensors", "genes.txt", "tokenizer_config.json", "README.md"} <= set(stored)
    assert {"modeling_scbert.py", "configuration_scbert.py"} <= set(stored)  # remote code travels with the weights
    assert stored["README.md"] == (first / "README.md").read_bytes()  # the folder carries the pushed card

    load = f"""
        import json, numpy as np, torch
        import modeling_scbert
        from huggingface_hub import ModelCard, hf_hub_download
        from safetensors.torch import load_file
        from transformers import AutoModelForSequenceClassification
        from modeling_scbert import ScBertTokenizer

        ids = torch.from_numpy(np.load("ids.npy"))
        latest = AutoModelForSequenceClassification.from_pretrained("my-lab/annotator").eval()
        pinned = AutoModelForSequenceClassification.from_pretrained("my-lab/annotator", revision="{commits["first"]}")
        with torch.no_grad():
            np.save("hub_latest.npy", latest(ids).logits.numpy())
            np.save("hub_pinned.npy", pinned.eval()(ids).logits.numpy())
        weights = hf_hub_download("my-lab/annotator", "model.safetensors", revision="{commits["first"]}")
        torch.save(load_file(weights), "pinned_weights.pt")
        tokenizer = ScBertTokenizer.from_pretrained("my-lab/annotator")
        card = ModelCard.load("my-lab/annotator")
        print(json.dumps({{"genes": list(tokenizer.genes), "hash": tokenizer.panel_hash,
                           "meta": card.data.to_dict()}}))
    """
    result = run_client(load, hub, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["genes"] == list(tiny_tokenizer().genes) and loaded["hash"] == tiny_tokenizer().panel_hash
    assert loaded["meta"]["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.8636
    assert loaded["meta"]["scbert"]["num_labels"] == 3
    np.testing.assert_array_equal(np.load(tmp_path / "hub_latest.npy"), expected["second"])
    np.testing.assert_array_equal(np.load(tmp_path / "hub_pinned.npy"), expected["first"])
    pinned_weights = torch.load(tmp_path / "pinned_weights.pt")
    local_weights = load_file(first / "model.safetensors")
    assert pinned_weights.keys() == local_weights.keys()
    for name, tensor in local_weights.items():
        assert torch.equal(pinned_weights[name], tensor), name  # bit-identical

    without_package = f"""
        import sys
        sys.modules["modeling_scbert"] = None  # the package must not be importable here
        sys.modules["tokenization"] = None
        import json, numpy as np, torch
        from huggingface_hub import hf_hub_download
        from transformers import AutoModelForSequenceClassification
        revision = "{commits["second"]}"
        model = AutoModelForSequenceClassification.from_pretrained(
            "my-lab/annotator", trust_remote_code=True, revision=revision
        ).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            np.save("remote_logits.npy", model(torch.from_numpy(np.load("ids.npy"))).logits.numpy())
        genes = open(hf_hub_download("my-lab/annotator", "genes.txt", revision=revision)).read().split()
        print(json.dumps(genes))
    """
    result = run_client(without_package, hub, tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == list(tiny_tokenizer().genes)
    np.testing.assert_allclose(np.load(tmp_path / "remote_logits.npy"), expected["second"], rtol=1e-5, atol=1e-7)
    assert not hub.unhandled, hub.unhandled


def test_the_model_and_tokenizer_push_to_hub_still_work_and_the_cli_pushes(tmp_path, hub):
    folder = make_annotator(tmp_path / "model")
    script = f"""
        import sys
        import modeling_scbert
        from modeling_scbert import ScBertForSequenceClassification, ScBertTokenizer
        from modeling_scbert.cli import main
        model = ScBertForSequenceClassification.from_pretrained({str(folder)!r})
        model.push_to_hub("my-lab/plain-model")
        ScBertTokenizer.from_pretrained({str(folder)!r}).push_to_hub("my-lab/plain-model")
        code = main(["push", "--model", {str(folder)!r}, "--repo-id", "my-lab/cli-model", "--private",
                     "--revision", "v1", "--license", "apache-2.0"])
        sys.exit(code)
    """
    result = run_client(script, hub, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    plain = hub.repos["my-lab/plain-model"].resolve("main").files
    assert {"config.json", "model.safetensors", "genes.txt", "tokenizer_config.json"} <= set(plain)
    cli_repo = hub.repos["my-lab/cli-model"]
    assert cli_repo.private
    assert "README.md" in cli_repo.resolve("v1").files and "README.md" not in cli_repo.resolve("main").files
    assert "my-lab/cli-model" in cli_repo.resolve("v1").files["README.md"].decode()
    assert not hub.unhandled, hub.unhandled


def test_push_without_credentials_says_how_to_log_in(tmp_path, hub):
    folder = make_annotator(tmp_path / "model")
    write_model_card(folder, {"license": "apache-2.0"})
    script = f"""
        import sys
        from modeling_scbert.cli import main
        sys.exit(main(["push", "--model", {str(folder)!r}, "--repo-id", "my-lab/model"]))
    """
    result = run_client(script, hub, tmp_path, token=None)
    assert result.returncode == 2, result.stderr[-4000:]
    assert "hf auth login" in result.stderr and "HF_TOKEN" in result.stderr
    assert not hub.repos  # refused before anything reached the Hub


def test_cli_push_errors_are_clear_without_a_traceback(tmp_path, capsys):
    folder = make_annotator(tmp_path / "model", tokenizer=False)
    assert cli_main(["push", "--model", str(folder), "--repo-id", "org/model", "--token", "hf_x"]) == 2
    assert "has no tokenizer" in capsys.readouterr().err
    assert cli_main(["push", "--model", str(folder), "--repo-id", "no-namespace", "--token", "hf_x"]) == 2
    assert "namespace/name" in capsys.readouterr().err


def test_a_trainer_run_with_push_to_hub_ends_with_the_scbert_card(tmp_path, hub):
    script = f"""
        import json, torch
        from transformers import Trainer, TrainingArguments
        from modeling_scbert import ScBertConfig, ScBertForSequenceClassification, ScBertTokenizer
        from modeling_scbert.hub.push import push_trainer_to_hub
        from modeling_scbert.training.run_card import ScBertModelCardCallback

        labels = {LABELS!r}
        torch.manual_seed(0)
        config = ScBertConfig(num_genes=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, head_dim=8,
                              intermediate_size=64, num_random_features=24, classifier_hidden_sizes=[16, 8],
                              num_labels=3, id2label=dict(enumerate(labels)),
                              label2id={{l: i for i, l in enumerate(labels)}})
        model = ScBertForSequenceClassification(config)
        tokenizer = ScBertTokenizer([f"GENE{{i}}" for i in range(12)])
        ids = torch.randint(0, 6, (12, 13)); ids[:, -1] = 0
        rows = [{{"input_ids": ids[i], "labels": i % 3}} for i in range(12)]
        facts = {{"license": "apache-2.0", "label_counts": {{"B cell": 4, "T cell": 4, "NK cell": 4}},
                  "evaluation": {{"dataset_name": "toy cells", "split": "train"}}}}
        args = TrainingArguments(output_dir="run", per_device_train_batch_size=4, num_train_epochs=2,
                                 save_strategy="epoch", eval_strategy="no", report_to=[], push_to_hub=True,
                                 hub_model_id="my-lab/trained", use_cpu=True, logging_strategy="no")
        trainer = Trainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                          callbacks=[ScBertModelCardCallback(facts=facts)])
        trainer.train()
        metrics = trainer.evaluate(rows)
        metrics.update({{"eval_accuracy": 0.5, "eval_macro_f1": 0.4}})  # stand-ins for the training module's metrics
        commit = push_trainer_to_hub(trainer, facts=facts, metrics=metrics)
        print(json.dumps({{"commit": commit.oid}}))
    """
    result = run_client(script, hub, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    repo = hub.repos["my-lab/trained"]
    head = repo.resolve("main")
    card = head.files["README.md"].decode()
    assert "A cell-type annotator" in card and "| 1 | T cell | 4 |" in card and "| accuracy | 0.500 |" in card
    assert "my-lab/trained" in card
    assert card == (tmp_path / "run" / "README.md").read_text()  # the local folder carries the same card
    assert {"genes.txt", "tokenizer_config.json", "model.safetensors", "modeling_scbert.py"} <= set(head.files)
    # Checkpoint pushes during training carried the scBERT card too (written before each push).
    messages = hub.commit_messages("my-lab/trained")
    assert messages[0] == "End of training" and any(m.startswith("Training in progress") for m in messages)
    for commit in repo.commits.values():
        if "README.md" in commit.files:
            assert b"A cell-type annotator" in commit.files["README.md"], commit.message
    assert not hub.unhandled, hub.unhandled
