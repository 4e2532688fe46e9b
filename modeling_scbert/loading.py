"""Loading a saved model for the package's own work, refusing weights that load but are wrong.

Every path that loads a saved model to annotate, embed, score gene attention or start fine-tuning goes through
:func:`load_checked_model`: ``from_pretrained``, then the saved tensors checked against the model (none missing, none
of another kind) and the loaded values checked to be finite (``tokenization.saved_weights``). A model a user loads
with ``from_pretrained`` directly behaves as transformers' models do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from os import PathLike
from typing import Any, TypeVar

from tokenization.saved_weights import check_loaded_weights

from .modeling_scbert import ScBertPreTrainedModel

logger = logging.getLogger(__name__)

__all__ = ["load_checked_model"]

M = TypeVar("M", bound=ScBertPreTrainedModel)


def load_checked_model(
    model_class: type[M], name_or_path: str | PathLike, *, may_lack: Iterable[str] = (), **kwargs: Any
) -> M:
    """``model_class.from_pretrained(name_or_path, **kwargs)``, refused when the saved weights are damaged.

    Parameters
    ----------
    model_class
        The scBERT class to load.
    name_or_path
        A folder or Hub id.
    may_lack
        Tensor-name prefixes the saved weights may lack (a new head over a pretrained encoder: ``("classifier.",)``).
    **kwargs
        For ``from_pretrained`` (``revision``, ``local_files_only``, ``dtype``, ...).

    Raises
    ------
    tokenization.saved_weights.DamagedWeightsError
        When saved tensors are missing or of another kind, or the loaded values are not finite; naming them.
    OSError
        As ``from_pretrained`` raises it (no such folder or repository, no weights).
    """
    model = model_class.from_pretrained(name_or_path, **kwargs)
    check_loaded_weights(model, name_or_path, may_lack=may_lack, **kwargs)
    return model
