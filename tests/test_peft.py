"""LoRA through peft on the attention projections, with the stock Trainer: train, save, load, merge."""

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Trainer

from modeling_scbert import ScBertConfig, ScBertForSequenceClassification, ScBertTokenizer, gene_attention
from tests.test_training_workflows import CELL_TYPES, TINY, args, make_cells
from tokenization.data import DataCollatorForCellClassification, to_dataset


def test_lora_round_trip_gives_the_same_logits_before_and_after_merging(tmp_path):
    cells = make_cells(48)
    tokenizer = ScBertTokenizer(list(cells.var_names))
    config = ScBertConfig(
        num_genes=tokenizer.num_genes,
        **TINY,
        id2label=dict(enumerate(CELL_TYPES)),
        label2id={name: i for i, name in enumerate(CELL_TYPES)},
    )
    torch.manual_seed(0)
    ScBertForSequenceClassification(config).save_pretrained(tmp_path / "base")
    base = ScBertForSequenceClassification.from_pretrained(tmp_path / "base")
    ids = torch.from_numpy(tokenizer(cells)["input_ids"])
    with torch.no_grad():
        before = base.eval()(ids).logits

    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "key", "value"], modules_to_save=["classifier"]
    )
    model = get_peft_model(base, lora)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or ".classifier." in name for name in trainable)
    assert sum("lora_A" in name for name in trainable) == 3 * TINY["num_hidden_layers"]  # q, k, v in every layer
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    dataset = to_dataset(cells, tokenizer=tokenizer, label_key="cell_type", cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(
        model=model,
        # The collator reads the sparse token columns, which forward() does not name.
        args=args(tmp_path, learning_rate=1e-2, num_train_epochs=3, remove_unused_columns=False),
        train_dataset=dataset,
        data_collator=DataCollatorForCellClassification(num_genes=tokenizer.num_genes),
    )
    trainer.train()
    for name, parameter in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(parameter, frozen_before[name]), f"{name} changed although frozen"
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    assert not torch.allclose(trained, before, atol=1e-3)  # the adapter changed the predictions

    model.save_pretrained(tmp_path / "adapter")
    adapter_files = {path.name for path in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= adapter_files

    loaded = PeftModel.from_pretrained(
        ScBertForSequenceClassification.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    ).eval()
    with torch.no_grad():
        reloaded = loaded(input_ids=ids).logits
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=1e-5)
    adapted = gene_attention(loaded, ids)  # before merging: through the LoRA-wrapped query and key

    merged = loaded.merge_and_unload()
    assert type(merged) is ScBertForSequenceClassification
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        merged_logits = merged.eval()(ids).logits
    torch.testing.assert_close(merged_logits, trained, atol=1e-5, rtol=1e-5)
    # Gene attention reads the adapted projections: wrapped and merged models agree, and differ from the base.
    torch.testing.assert_close(adapted, gene_attention(merged, ids), atol=1e-6, rtol=1e-5)
    base_again = ScBertForSequenceClassification.from_pretrained(tmp_path / "base")
    assert not torch.allclose(adapted, gene_attention(base_again, ids), atol=1e-6)

    merged.save_pretrained(tmp_path / "merged")
    again = ScBertForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, trained, atol=1e-5, rtol=1e-5)
