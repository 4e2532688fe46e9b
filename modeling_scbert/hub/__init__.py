"""The Hugging Face Hub: model cards rendered from facts, and pushing a model folder.

- :mod:`.card_data`: the card's facts (a ``huggingface_hub.CardData``);
- :mod:`.card`: rendering the card and checking it against its folder;
- :mod:`.push`: pushing a model folder, or a Trainer's output.
"""

from tokenization._imports import lazy_attributes

_LAZY = {
    "render_model_card": "modeling_scbert.hub.card",
    "validate_model_card": "modeling_scbert.hub.card",
    "write_model_card": "modeling_scbert.hub.card",
    "ModelCardError": "modeling_scbert.hub.card_data",
    "ScBertCardData": "modeling_scbert.hub.card_data",
    "HubAuthenticationError": "modeling_scbert.hub.push",
    "push_model_folder": "modeling_scbert.hub.push",
    "push_trainer_to_hub": "modeling_scbert.hub.push",
}
# What the module modeling_scbert.hub gave before 0.2 and now lives elsewhere.
_MOVED = {
    "CARD_FACTS_NAME": "modeling_scbert.hub.card_data",
    "ScBertModelCardCallback": "modeling_scbert.training.run_card",
    "ScBertTrainer": "modeling_scbert.training.trainer",
    "check_repo_id": "modeling_scbert.hub.push",
    "find_placeholders": "modeling_scbert.hub.card",
    "metrics_to_evaluation": "modeling_scbert.hub.card_data",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals(), _MOVED)

__all__ = [
    "HubAuthenticationError",
    "ModelCardError",
    "ScBertCardData",
    "push_model_folder",
    "push_trainer_to_hub",
    "render_model_card",
    "validate_model_card",
    "write_model_card",
]
