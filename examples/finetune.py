"""Cell-type fine-tuning with the stock Trainer; the same as `scbert finetune`.

Defaults that differ from TrainingArguments: evaluate and save every epoch, keep the best model by macro-F1,
keep two checkpoints. Examples:

    # the published recipe (train layer -2, the final LayerNorm and a new head) from a pretrained model
    python examples/finetune.py --model_name_or_path scbert-pretrained --train_file reference.h5ad \
        --label_key cell_type --validation_fraction 0.1 --output_dir scbert-annotator \
        --finetuning_preset published --num_train_epochs 10 --learning_rate 1e-4

    # full fine-tuning with a class-weighted loss and early stopping, on a GPU in bf16
    python examples/finetune.py --model_name_or_path scbert-pretrained --train_file reference.h5ad \
        --label_key cell_type --validation_file held_out.h5ad --output_dir scbert-annotator \
        --finetuning_preset full --class_weighting balanced --early_stopping_patience 3 --bf16

    # push the best model (with its tokenizer and id2label) to the Hub at the end
    python examples/finetune.py ... --push_to_hub --hub_model_id ORG/scbert-annotator

Options can also come from one JSON or YAML file: `python examples/finetune.py options.yaml`.
"""

import sys

from modeling_scbert.training import finetune_main

if __name__ == "__main__":
    finetune_main(sys.argv[1:], prog="examples/finetune.py")
