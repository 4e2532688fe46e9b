"""Masked-expression pretraining with the stock Trainer; the same as `scbert pretrain`.

Every TrainingArguments option works. Examples:

    # a new compact model over the genes of cells.h5ad (the panel is built from its var_names)
    python examples/pretrain.py --train_file cells.h5ad --output_dir scbert-pretrained \
        --config_overrides "hidden_size=64,num_hidden_layers=2,num_attention_heads=4,head_dim=16" \
        --num_train_epochs 5 --per_device_train_batch_size 16 --learning_rate 1e-3 --validation_fraction 0.05 \
        --eval_strategy epoch --save_strategy epoch

    # continue from a published or earlier model (its tokenizer fixes the panel); resume after an interruption
    python examples/pretrain.py --model_name_or_path scbert-pretrained --train_file more_cells.h5ad \
        --output_dir scbert-pretrained-2 --resume_from_checkpoint true

    # two GPUs / two CPU processes
    torchrun --standalone --nproc_per_node 2 examples/pretrain.py --train_file cells.h5ad --output_dir out ...

Options can also come from one JSON or YAML file: `python examples/pretrain.py options.yaml`.
"""

import sys

from modeling_scbert.training import pretrain_main

if __name__ == "__main__":
    pretrain_main(sys.argv[1:], prog="examples/pretrain.py")
