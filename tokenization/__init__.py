"""The scBERT expression tokenizer and data pipeline (independent of modeling_scbert)."""
