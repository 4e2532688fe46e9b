"""The card's facts as a huggingface_hub CardData, the species rule, and repository ids (offline)."""

import pytest
import torch
from huggingface_hub import CardData, ModelCard
from test_hub import FACTS, make_annotator, tiny_config

from modeling_scbert import ScBertForMaskedLM, ScBertTokenizer
from modeling_scbert.hub.card import write_model_card
from modeling_scbert.hub.card_data import ScBertCardData
from modeling_scbert.hub.push import check_repo_id
from tokenization.genes import ensembl_species_prefix


def test_card_data_is_a_hub_card_data_whose_yaml_heads_the_card(tmp_path):
    folder = make_annotator(tmp_path / "model")
    data = ScBertCardData.from_model_folder(folder, FACTS)
    assert isinstance(data, CardData)
    text = write_model_card(folder, FACTS).read_text()
    card = ModelCard(text)
    assert card.data.to_dict() == data.merged({"model_name": "model"}).to_dict()
    assert text.startswith(f"---\n{data.merged({'model_name': 'model'}).to_yaml()}\n---\n")
    assert ScBertCardData(license="mit", model_name="x") == ScBertCardData(model_name="x").merged({"license": "mit"})


@pytest.mark.parametrize(
    ("genes", "species"),
    [
        ([f"ENSMUSG{i:011d}" for i in range(12)], "mouse"),
        ([f"ENSG{i:011d}.{i % 3 + 1}" for i in range(12)], "human"),  # versioned ids: the same rule
        ([f"ENSG{i:011d}" for i in range(6)] + [f"ENSMUSG{i:011d}" for i in range(6)], None),  # two species
        ([f"GENE{i}" for i in range(12)], None),  # symbols say nothing certain
    ],
)
def test_species_is_read_from_the_ensembl_prefix_of_the_panel(tmp_path, genes, species):
    folder = tmp_path / "backbone"
    torch.manual_seed(0)
    ScBertForMaskedLM(tiny_config(num_labels=2, id2label=None, label2id=None)).save_pretrained(folder)
    ScBertTokenizer(genes).save_pretrained(folder)
    assert ScBertCardData.from_model_folder(folder).species == species
    text = write_model_card(folder, {"license": "mit"}).read_text()
    assert (f"| species | {species} |" in text) is (species is not None)


def test_ensembl_species_prefix():
    assert ensembl_species_prefix("ENSG00000141510.17") == "ENSG"
    assert ensembl_species_prefix("ENSMUSG00000059552") == "ENSMUSG"
    assert ensembl_species_prefix("TP53") is None and ensembl_species_prefix("ENSG0001") is None


def test_a_repo_id_the_hub_refuses_is_refused_with_the_hubs_reason():
    with pytest.raises(ValueError, match="not of the form 'namespace/name'.*Cannot have -- or .. in repo_id"):
        check_repo_id("my-lab/x..y")
    with pytest.raises(ValueError, match="namespace/name.*a namespace .* and a name are both needed"):
        check_repo_id("scbert-pbmc")
    assert check_repo_id("my-lab/scbert.pbmc_v2") == "my-lab/scbert.pbmc_v2"
