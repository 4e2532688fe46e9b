import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from modeling_scbert import ScBertConfig, ScBertForMaskedLM
from modeling_scbert.training.trainer import ScBertFeatureRedrawCallback


def _features(model):
    return [layer.attention.random_features.clone() for layer in model.scbert.encoder.layers]


def test_feature_redraw_callback_fires_at_its_interval(tmp_path):
    config = ScBertConfig(
        num_genes=10, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, head_dim=8, feature_redraw_interval=3
    )
    model = ScBertForMaskedLM(config)
    twin = ScBertForMaskedLM(config)  # a second "process": same interval and seed
    args = TrainingArguments(output_dir=str(tmp_path), seed=7, report_to=[], use_cpu=True)
    callback = ScBertFeatureRedrawCallback()
    changed_at = []
    for step in range(1, 10):
        before = _features(model)
        state = TrainerState(global_step=step)
        callback.on_step_end(args, state, TrainerControl(), model=model)
        callback.on_step_end(args, state, TrainerControl(), model=twin)
        if any(not torch.equal(a, b) for a, b in zip(before, _features(model))):
            changed_at.append(step)
            for a, b in zip(_features(model), _features(twin)):
                assert torch.equal(a, b)  # every process draws the same features
    assert changed_at == [3, 6, 9]


def test_feature_redraw_can_be_disabled(tmp_path):
    config = ScBertConfig(num_genes=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, head_dim=8)
    model = ScBertForMaskedLM(config)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    before = _features(model)
    ScBertFeatureRedrawCallback(interval=0).on_step_end(
        args, TrainerState(global_step=1000), TrainerControl(), model=model
    )
    assert all(torch.equal(a, b) for a, b in zip(before, _features(model)))
