"""scBERT model configuration.

This file is a Hub file: it imports only ``transformers`` (and, in ``modeling_scbert.py``, torch), so that a saved
model folder can be loaded with ``trust_remote_code=True`` where this package is not installed.
"""

import math

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

GENE_EMBEDDING_TYPES = ("frozen", "learned")
CLASSIFIER_TYPES = ("conv", "pooled")
ATTENTION_SCHEDULES = ("per_cell", "batched")


class ScBertConfig(PreTrainedConfig):
    r"""Configuration of an scBERT model (a Performer encoder over one cell's binned gene expression).

    The defaults are the published scBERT (Yang et al., *Nat Mach Intell* 2022). The published code named the
    hyperparameters differently; the mapping is:

    ============================  =====================================  ==========================================
    field                         published name (``PerformerLM``)       meaning
    ============================  =====================================  ==========================================
    ``vocab_size``                ``num_tokens`` (7)                      expression tokens: bins 0..5 and the mask
    ``num_genes``                 ``max_seq_len - 1`` (16,906)            gene panel size; sequence length is
                                                                          ``num_genes + 1`` (one appended 0 token)
    ``hidden_size``               ``dim`` (200)                           width (= gene2vec dimension)
    ``num_hidden_layers``         ``depth`` (6)                           Performer layers
    ``num_attention_heads``       ``heads`` (10)                          attention heads
    ``head_dim``                  ``dim_head`` (64)                       per-head width; q/k/v map ``hidden_size``
                                                                          to ``num_attention_heads * head_dim``
    ``intermediate_size``         ``ff_mult * dim`` (4 * 200)             feed-forward width
    ``num_random_features``       ``nb_features`` (``int(d ln d)``)       FAVOR+ random features per head
    ``feature_redraw_interval``   ``feature_redraw_interval`` (1000)      training steps between redraws
    ``hidden_dropout_prob``       ``ff_dropout`` (0)                      feed-forward and residual dropout
    ``attention_probs_dropout_prob`` ``attn_dropout`` (0)                 dropout on the attention output
    ``embedding_dropout_prob``    ``emb_dropout`` (0)                     dropout after the embeddings
    ``gene_embedding_type``       ``g2v_position_emb`` (True: frozen)     ``"frozen"`` table (gene2vec) or
                                                                          ``"learned"`` embedding
    ``classifier_type``           fine-tuning head ``Identity``           ``"conv"``: the published head
    ``classifier_hidden_sizes``   ``fc1``/``fc2`` widths (512, 128)       MLP widths of the classification head
    ============================  =====================================  ==========================================

    Args:
        vocab_size: Number of expression tokens, including the mask token.
        num_genes: Size of the gene panel. Inputs have ``num_genes + 1`` positions.
        hidden_size: Width of the embeddings and the residual stream.
        num_hidden_layers: Number of pre-LayerNorm Performer layers.
        num_attention_heads: Number of attention heads.
        head_dim: Width of each head. Not ``hidden_size / num_attention_heads``: the published model uses 64.
        intermediate_size: Width of the GELU feed-forward block.
        hidden_act: Feed-forward activation; ``"gelu"`` is the exact (erf) GELU, as published.
        layer_norm_eps: LayerNorm epsilon.
        num_random_features: FAVOR+ random features per head. ``None`` means ``int(head_dim * ln(head_dim))``.
        feature_redraw_interval: Training steps between redraws of the random features, done by
            ``ScBertFeatureRedrawCallback``; ``None`` or 0 never redraws.
        kernel_epsilon: Constant added after the exponential in the FAVOR+ softmax kernel (published: 1e-4).
        mask_token_id: Token id of the masked-expression token.
        hidden_dropout_prob: Dropout on the feed-forward output.
        attention_probs_dropout_prob: Dropout on the attention output.
        embedding_dropout_prob: Dropout on the summed embeddings.
        gene_embedding_type: ``"frozen"`` (a fixed table, such as gene2vec, whose last row, for the appended token,
            is zero) or ``"learned"`` (a trainable embedding, for new models).
        classifier_type: ``"conv"``: the published head, a per-position projection to one score (the published
            ``Conv2d(1, 1, (1, hidden_size))``) + ReLU, flattened over all ``num_genes + 1`` positions, then an MLP.
            ``"pooled"``: mean over unmasked positions, then an MLP; independent of the panel size.
        classifier_hidden_sizes: Widths of the classification MLP's hidden layers. ``None`` means ``[512, 128]``.
        classifier_dropout: Dropout after each hidden layer of the classification MLP.
        classifier_input_dropout: Dropout on the classification head's input: the per-position scores of the
            ``"conv"`` head (one per gene), the pooled encoding of the ``"pooled"`` head. Not in the published model
            (0 there); on small references it keeps the head from resting on a few genes (see docs/training.md).
        classifier_score_activation: Activation of the ``"conv"`` head's per-position scores, any name of
            transformers' ``ACT2FN``. ``"relu"`` as published. Its one projection is shared by every position, so
            once that projection is negative at every position the ReLU passes no gradient, the head sees only zeros
            and the model predicts one class for good. ``"leaky_relu"`` (slope 0.01 below zero) keeps a gradient but
            passes 1% of the cells' differences when training settles the projection's sign with expressed genes
            below zero (a collapsed seed on the Kang 2018 PBMCs). ``"linear"`` (no activation; the MLP after the
            scores has its own) passes them whichever the sign: ``finetune`` gives a new model ``"linear"``
            (docs/training.md, "Seeds").
        classifier_hidden_act: Activation after each hidden layer of the classification MLP, any name of
            transformers' ``ACT2FN``. ``"relu"`` as published. A ReLU unit whose input is negative for every cell
            passes no gradient and stays dead (on the Kang 2018 PBMCs, the runs that failed had lost most of
            them: docs/training.md). ``"gelu"`` keeps a small gradient there; it did not rescue those runs, learning-
            rate warmup did, so new models keep the ReLU.
        attention_chunk_size: Tokens processed at a time in the FAVOR+ feature map and the feed-forward (per cell
            with the ``"per_cell"`` schedule, for the whole batch with ``"batched"``). ``None`` picks a size: 512
            tokens per cell (the temporaries stay in a CPU's cache) or, batched, as many tokens as keep one chunk's
            feature map within 2**28 elements (1 GiB in float32; thousands of tokens on a GPU). Changes speed and
            memory, never the result.
        attention_schedule: How the cells of a batch go through the attention and the feed-forward; both compute the
            same attention and each cell's output never depends on its batch. ``"per_cell"``: one cell and one chunk
            of tokens at a time (fast on a CPU: few, cache-sized temporaries). ``"batched"``: all cells together
            (batch x heads as the batch dimension of the matrix products), in large chunks of tokens, so a forward
            launches a few hundred kernels instead of thousands per cell (fast on a GPU). ``None`` chooses at run
            time: ``"per_cell"`` on a CPU, ``"batched"`` on any accelerator.
        initializer_range: Standard deviation of the normal initialiser.

    Example:

    ```python
    >>> from modeling_scbert import ScBertConfig, ScBertModel
    >>> config = ScBertConfig(num_genes=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
    >>> model = ScBertModel(config)
    ```
    """

    model_type = "scbert"

    vocab_size: int = 7
    num_genes: int = 16906
    hidden_size: int = 200
    num_hidden_layers: int = 6
    num_attention_heads: int = 10
    head_dim: int = 64
    intermediate_size: int = 800
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    num_random_features: int | None = None
    feature_redraw_interval: int | None = 1000
    kernel_epsilon: float = 1e-4
    mask_token_id: int = 6
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    embedding_dropout_prob: float = 0.0
    gene_embedding_type: str = "frozen"
    classifier_type: str = "conv"
    classifier_hidden_sizes: list[int] | None = None
    classifier_dropout: float = 0.0
    classifier_input_dropout: float = 0.0
    classifier_score_activation: str = "relu"
    classifier_hidden_act: str = "relu"
    attention_chunk_size: int | None = None
    attention_schedule: str | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.num_random_features is None:
            # The published default: nb_features = int(dim_head * ln(dim_head)), 266 for 64.
            self.num_random_features = int(self.head_dim * math.log(self.head_dim))
        if self.classifier_hidden_sizes is None:
            self.classifier_hidden_sizes = [512, 128]
        self.classifier_hidden_sizes = [int(size) for size in self.classifier_hidden_sizes]
        super().__post_init__(**kwargs)
        self._check_consistency()

    @property
    def sequence_length(self) -> int:
        """Number of input positions: the gene panel plus the appended token."""
        return self.num_genes + 1

    @property
    def highest_expression_bin(self) -> int:
        """Largest expression token (the binning clamp); tokens above it are special (the mask token)."""
        return self.mask_token_id - 1

    def _check_consistency(self) -> None:
        positive = {
            "vocab_size": self.vocab_size,
            "num_genes": self.num_genes,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "num_random_features": self.num_random_features,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(
                f"`mask_token_id` ({self.mask_token_id}) must be a token of the vocabulary: 0 <= mask_token_id < "
                f"vocab_size ({self.vocab_size})."
            )
        for name in ("hidden_act", "classifier_score_activation", "classifier_hidden_act"):
            if getattr(self, name) not in ACT2FN:
                raise ValueError(
                    f"`{name}` {getattr(self, name)!r} is not an activation transformers knows; use one of "
                    f"{sorted(ACT2FN)}."
                )
        if self.gene_embedding_type not in GENE_EMBEDDING_TYPES:
            raise ValueError(
                f"`gene_embedding_type` must be one of {GENE_EMBEDDING_TYPES}, got {self.gene_embedding_type!r}."
            )
        if self.classifier_type not in CLASSIFIER_TYPES:
            raise ValueError(f"`classifier_type` must be one of {CLASSIFIER_TYPES}, got {self.classifier_type!r}.")
        if any(size <= 0 for size in self.classifier_hidden_sizes):
            raise ValueError(f"`classifier_hidden_sizes` must be positive, got {self.classifier_hidden_sizes}.")
        dropouts = {
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
            "embedding_dropout_prob": self.embedding_dropout_prob,
            "classifier_dropout": self.classifier_dropout,
            "classifier_input_dropout": self.classifier_input_dropout,
        }
        for name, value in dropouts.items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
        if self.kernel_epsilon < 0:
            raise ValueError(f"`kernel_epsilon` must be non-negative, got {self.kernel_epsilon}.")
        if self.feature_redraw_interval is not None and self.feature_redraw_interval < 0:
            raise ValueError(
                f"`feature_redraw_interval` must be a positive number of steps, or None/0 to never redraw; got "
                f"{self.feature_redraw_interval}."
            )
        if self.attention_chunk_size is not None and self.attention_chunk_size <= 0:
            raise ValueError(f"`attention_chunk_size` must be positive or None, got {self.attention_chunk_size}.")
        if self.attention_schedule is not None and self.attention_schedule not in ATTENTION_SCHEDULES:
            raise ValueError(
                f"`attention_schedule` must be one of {ATTENTION_SCHEDULES} or None (per-cell on CPU, batched on "
                f"accelerators), got {self.attention_schedule!r}."
            )


__all__ = ["ScBertConfig"]
