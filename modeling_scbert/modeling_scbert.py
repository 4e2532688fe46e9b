"""PyTorch scBERT: a Performer (FAVOR+ linear attention) encoder over one cell's binned gene expression.

Read top to bottom: the FAVOR+ math as small pure functions, then embeddings, attention, the pre-LayerNorm layer, the
encoder, the pretrained-model base class, the base model and the two heads.

This file is a Hub file: it imports only torch, transformers and ``configuration_scbert`` (relatively), so that a saved
model folder can be loaded with ``trust_remote_code=True`` where this package is not installed.
"""

import contextlib
import math

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple

from .configuration_scbert import ScBertConfig

logger = logging.get_logger(__name__)

# Tokens per chunk in the attention and the feed-forward when `config.attention_chunk_size` is None: large enough for
# efficient matrix products, small enough that a chunk's (heads x tokens x features) temporaries stay in cache.
ATTENTION_CHUNK_TOKENS = 512


# ---------------------------------------------------------------------------------------------------------------------
# FAVOR+ (Choromanski et al., "Rethinking Attention with Performers", ICLR 2021), non-causal, softmax kernel.
# ---------------------------------------------------------------------------------------------------------------------


def draw_orthogonal_random_features(
    num_features: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw a FAVOR+ projection: orthogonal Gaussian random features with chi-distributed row norms.

    Rows are taken in blocks of ``dim`` from the orthonormal factor of square Gaussian matrices, so rows within a
    block are exactly orthogonal; each row is then scaled by the norm of an independent ``dim``-dimensional Gaussian
    vector, so that every row has the length distribution of an unstructured Gaussian row.

    Args:
        num_features: Number of random features (rows).
        dim: Dimension of the vectors to be projected (columns), the attention head width.
        generator: Random number generator; ``None`` uses torch's global one.
        device: Device of the returned tensor.
        dtype: Dtype of the returned tensor. The draw itself is done in float32.

    Returns:
        Tensor of shape ``(num_features, dim)``.
    """
    # Draw where the generator lives (so a seeded CPU generator gives the same features on every device), then move.
    draw_device = generator.device if generator is not None else device
    num_blocks = math.ceil(num_features / dim)
    gaussian = torch.randn(num_blocks, dim, dim, generator=generator, device=draw_device, dtype=torch.float32)
    orthonormal, _ = torch.linalg.qr(gaussian)  # columns of each block are orthonormal
    rows = orthonormal.transpose(-1, -2).reshape(num_blocks * dim, dim)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator, device=draw_device, dtype=torch.float32).norm(dim=-1)
    return (norms.unsqueeze(-1) * rows).to(device=device, dtype=dtype)


def softmax_kernel_features(
    x: torch.Tensor,
    projection: torch.Tensor,
    *,
    is_query: bool,
    epsilon: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Positive random features ``phi(x)`` whose inner products estimate ``exp(q . k / sqrt(d))``.

    ``phi(x) = m^-1/2 (exp(w_i . x' - |x'|^2 / 2 - s) + epsilon)`` with ``x' = d^-1/4 x``. The stabiliser ``s`` keeps
    the exponentials in range: for a query it is the maximum of ``w_i . x'`` over the features of that token; for a
    key it is the maximum over the whole sample (all heads, tokens and features). ``epsilon`` is added after the
    exponential, so ``s`` is part of the result, exactly as in the published scBERT. Taking the key maximum per sample
    (not per batch) makes each cell's output independent of the other cells in its batch.

    Args:
        x: Queries or keys, shape ``(batch, heads, tokens, head_dim)``.
        projection: Random features, shape ``(num_features, head_dim)``.
        is_query: Whether ``x`` holds queries (per-token stabiliser) or keys (per-sample stabiliser).
        epsilon: Constant added after the exponential.
        mask: Optional boolean ``(batch, tokens)``, True where a token takes part. Masked keys are left out of the
            stabiliser and get all-zero features, so they contribute nothing.

    Returns:
        Tensor of shape ``(batch, heads, tokens, num_features)``.
    """
    data_normalizer = x.shape[-1] ** -0.25
    ratio = projection.shape[0] ** -0.5
    projected = torch.matmul(data_normalizer * x, projection.transpose(0, 1).to(x.dtype))
    half_squared_norm = (x**2).sum(dim=-1, keepdim=True) * (0.5 * data_normalizer**2)
    # The stabilisers are constants for the backward pass (as in performer-pytorch >= 1.0).
    if is_query:
        stabiliser = projected.amax(dim=-1, keepdim=True).detach()
    else:
        candidates = projected if mask is None else projected.masked_fill(~mask[:, None, :, None], float("-inf"))
        stabiliser = candidates.amax(dim=(1, 2, 3), keepdim=True).detach()
    features = ratio * (torch.exp(projected - half_squared_norm - stabiliser) + epsilon)
    if mask is not None and not is_query:
        features = features * mask[:, None, :, None].to(features.dtype)
    return features


def linear_attention(query_features: torch.Tensor, key_features: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Non-causal linear attention: ``D^-1 phi(Q) (phi(K)^T V)`` with ``D = diag(phi(Q) phi(K)^T 1)``.

    Args:
        query_features: ``(batch, heads, tokens, num_features)``.
        key_features: ``(batch, heads, tokens, num_features)``.
        value: ``(batch, heads, tokens, head_dim)``.

    Returns:
        Tensor of shape ``(batch, heads, tokens, head_dim)``.
    """
    key_sum = key_features.sum(dim=-2)  # (batch, heads, num_features)
    normaliser = torch.einsum("...nm,...m->...n", query_features, key_sum)
    context = torch.einsum("...nm,...ne->...me", key_features, value)
    return torch.einsum("...nm,...me->...ne", query_features, context) / normaliser.unsqueeze(-1)


# ---------------------------------------------------------------------------------------------------------------------
# The same attention, computed in chunks of tokens with a recomputing backward. This is what the model runs: it never
# materialises a (tokens x features) tensor for the whole cell, so its temporaries stay in cache, and training keeps
# only q, k and v per layer instead of the feature maps. It equals the functions above up to float rounding (tested).
#
# Exact rewrites that make chunking possible:
# - The key stabiliser is the maximum over the whole sample, known only after all keys are seen. The sums over keys are
#   kept relative to a running maximum and rescaled by exp(old - new) when it grows (as in online softmax); the
#   epsilon term does not depend on the stabiliser and is added separately (epsilon times the sum over the keys).
# - The ratio m^-1/2 multiplies both the numerator and the normaliser of every output, so it is left out.
# - A column of ones appended to v turns the normaliser sum_j phi(k_j) into one more column of sum_j phi(k_j) v_j^T,
#   so numerator and normaliser come out of the same matrix product.
# The stabilisers are constants for the backward pass, as in `softmax_kernel_features`.
# Tensors here are one sample's, laid out (tokens, heads, head_dim) as the q/k/v projections produce them.
# ---------------------------------------------------------------------------------------------------------------------


def _exp_features(x: torch.Tensor, projection: torch.Tensor, stabiliser: torch.Tensor | None = None) -> torch.Tensor:
    """``exp(x P^T - |x|^2 d^-1/2 / 2 - s)`` for ``x`` of shape (heads, tokens, head_dim) -> (heads, tokens, features).

    ``projection`` is already scaled by ``d^-1/4``. Without ``stabiliser``, ``s`` is the per-token maximum (queries).
    """
    projected = torch.matmul(x, projection.transpose(0, 1))
    if stabiliser is None:
        stabiliser = projected.amax(dim=-1, keepdim=True)
    # Both offsets are per token: add them first, so the large tensor is passed over once.
    offset = (x * x).sum(dim=-1, keepdim=True).mul_(0.5 * x.shape[-1] ** -0.5).add_(stabiliser)
    return projected.sub_(offset).exp_()


def _with_ones(value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(tokens, heads, d) -> (heads, tokens, d + 1): v with a column of ones, zeroed where the mask is False."""
    extended = torch.cat([value, value.new_ones(*value.shape[:-1], 1)], dim=-1)
    if mask is not None:
        extended.masked_fill_(~mask[:, None, None], 0.0)
    return extended.transpose(0, 1)


def _key_summary(chunks, projection, epsilon):
    """``sum_j phi(k_j) [v_j, 1]^T`` (heads, features, head_dim + 1) and the key stabiliser, in one pass over the keys
    with a running maximum. ``chunks`` yields ``(key, value, mask)`` per chunk of tokens: (tokens, heads, head_dim)
    twice and a boolean (tokens,) or ``None``."""
    summary = value_sum = maximum = lowest = None
    for key_chunk, value_chunk, mask_chunk in chunks:
        if summary is None:
            _, heads, head_dim = value_chunk.shape
            lowest = torch.finfo(key_chunk.dtype).min
            maximum = torch.full((), float("-inf"), dtype=key_chunk.dtype, device=key_chunk.device)
            summary = value_chunk.new_zeros(heads, projection.shape[0], head_dim + 1)
            value_sum = value_chunk.new_zeros(heads, 1, head_dim + 1)
        k = key_chunk.transpose(0, 1)
        projected = torch.matmul(k, projection.transpose(0, 1))
        if mask_chunk is not None:
            projected.masked_fill_(~mask_chunk[:, None], float("-inf"))  # exp(-inf) = 0: masked keys drop out
        new_maximum = torch.maximum(maximum, projected.amax())
        # Clamping keeps an all-masked prefix (maximum still -inf) from producing -inf - -inf = nan.
        summary.mul_(torch.exp(maximum.clamp_min(lowest) - new_maximum.clamp_min(lowest)))
        maximum = new_maximum
        offset = (k * k).sum(dim=-1, keepdim=True).mul_(0.5 * k.shape[-1] ** -0.5).add_(maximum.clamp_min(lowest))
        features = projected.sub_(offset).exp_()
        extended_value = _with_ones(value_chunk, mask_chunk)
        summary.baddbmm_(features.transpose(1, 2), extended_value)
        value_sum += extended_value.sum(dim=1, keepdim=True)
    return summary.add_(value_sum, alpha=epsilon), maximum


def _sliced(tensors, mask, chunk_size):
    """Chunks of already projected keys and values, as :func:`_key_summary` takes them."""
    key, value = tensors
    for start in range(0, key.shape[0], chunk_size):
        chunk = slice(start, start + chunk_size)
        yield key[chunk], value[chunk], None if mask is None else mask[chunk]


def _attend_chunk(query, projection, summary, epsilon):
    """Numerators and normalisers (heads, tokens, head_dim + 1) of a chunk of queries, and their features."""
    features = _exp_features(query, projection).add_(epsilon)
    return torch.bmm(features, summary), features


class _ChunkedFavorAttention(torch.autograd.Function):
    """FAVOR+ attention of one sample, chunked over tokens, with a backward that recomputes the feature maps.

    Inputs are (tokens, heads, head_dim); ``projection`` is the random features scaled by ``head_dim ** -0.25``.
    """

    @staticmethod
    def forward(ctx, query, key, value, projection, mask, epsilon, chunk_size):
        summary, maximum = _key_summary(_sliced((key, value), mask, chunk_size), projection, epsilon)
        output = torch.empty_like(query)
        for start in range(0, query.shape[0], chunk_size):
            chunk = slice(start, start + chunk_size)
            ratios, _ = _attend_chunk(query[chunk].transpose(0, 1), projection, summary, epsilon)
            torch.div(ratios[..., :-1], ratios[..., -1:], out=output[chunk].transpose(0, 1))
        ctx.save_for_backward(query, key, value, projection, mask, summary, maximum)
        ctx.epsilon, ctx.chunk_size = epsilon, chunk_size
        return output

    @staticmethod
    def backward(ctx, grad_output):
        with torch.autocast(device_type=grad_output.device.type, enabled=False):
            return _ChunkedFavorAttention._backward(ctx, grad_output)

    @staticmethod
    def _backward(ctx, grad_output):
        query, key, value, projection, mask, summary, maximum = ctx.saved_tensors
        epsilon, chunk_size = ctx.epsilon, ctx.chunk_size
        norm_scale = query.shape[-1] ** -0.5  # d(|x|^2 d^-1/2 / 2) / dx = x d^-1/2

        # Queries: output = numerator / normaliser, both read off the chunk's features times the summary.
        grad_query = torch.empty_like(query)
        grad_summary = torch.zeros_like(summary)
        for start in range(0, query.shape[0], chunk_size):
            chunk = slice(start, start + chunk_size)
            q = query[chunk].transpose(0, 1)
            ratios, features = _attend_chunk(q, projection, summary, epsilon)
            numerator, normaliser = ratios[..., :-1], ratios[..., -1:]
            grad_numerator = grad_output[chunk].transpose(0, 1) / normaliser
            grad_normaliser = -(grad_numerator * numerator).sum(dim=-1, keepdim=True) / normaliser
            grad_ratios = torch.cat([grad_numerator, grad_normaliser], dim=-1)
            grad_summary.baddbmm_(features.transpose(1, 2), grad_ratios)
            grad_exponent = torch.bmm(grad_ratios, summary.transpose(1, 2)).mul_(features.sub_(epsilon))
            grad = torch.matmul(grad_exponent, projection).sub_(grad_exponent.sum(-1, keepdim=True) * q * norm_scale)
            grad_query[chunk] = grad.transpose(0, 1)

        # Keys and values: summary = sum_j (exp_j + epsilon) [v_j, 1]^T over unmasked j.
        grad_key = torch.empty_like(key)
        grad_value = torch.empty_like(value)
        grad_value_epsilon = epsilon * grad_summary[..., :-1].sum(dim=1, keepdim=True)
        for start in range(0, key.shape[0], chunk_size):
            chunk = slice(start, start + chunk_size)
            k = key[chunk].transpose(0, 1)
            chunk_mask = None if mask is None else mask[chunk]
            exponentials = _exp_features(k, projection, maximum)
            if chunk_mask is not None:
                exponentials.masked_fill_(~chunk_mask[:, None], 0.0)
            grad = torch.bmm(exponentials, grad_summary[..., :-1]).add_(grad_value_epsilon)
            if chunk_mask is not None:
                grad.masked_fill_(~chunk_mask[:, None], 0.0)
            grad_value[chunk] = grad.transpose(0, 1)
            grad_exponent = torch.bmm(_with_ones(value[chunk], chunk_mask), grad_summary.transpose(1, 2))
            grad_exponent.mul_(exponentials)
            grad = torch.matmul(grad_exponent, projection).sub_(grad_exponent.sum(-1, keepdim=True) * k * norm_scale)
            grad_key[chunk] = grad.transpose(0, 1)
        return grad_query, grad_key, grad_value, None, None, None, None


def chunked_favor_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    projection: torch.Tensor,
    *,
    epsilon: float,
    chunk_size: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """FAVOR+ attention equal to ``linear_attention`` of ``softmax_kernel_features``, computed in token chunks.

    Args:
        query, key, value: ``(batch, tokens, heads, head_dim)``, the layout of the q/k/v projections.
        projection: Random features ``(num_features, head_dim)``.
        epsilon: Constant added after the exponential.
        chunk_size: Tokens per chunk; changes speed and memory, not the result.
        mask: Optional boolean ``(batch, tokens)``, True where a token takes part as a key.

    Returns:
        Tensor of shape ``(batch, tokens, heads, head_dim)``.
    """
    # The feature maps are exponentials of projections: compute them in at least float32, also for half-precision
    # inputs and under autocast (which would otherwise run the matrix products inside in half precision).
    dtype = query.dtype
    compute_dtype = torch.promote_types(dtype, torch.float32)
    with torch.autocast(device_type=query.device.type, enabled=False):
        scaled_projection = projection.to(compute_dtype) * query.shape[-1] ** -0.25
        outputs = [
            _ChunkedFavorAttention.apply(
                query[sample].to(compute_dtype),
                key[sample].to(compute_dtype),
                value[sample].to(compute_dtype),
                scaled_projection,
                None if mask is None else mask[sample],
                epsilon,
                chunk_size,
            )
            for sample in range(query.shape[0])
        ]
    return torch.stack(outputs).to(dtype)


# ---------------------------------------------------------------------------------------------------------------------
# The same attention for accelerators: all cells of a batch at once ("batched" schedule).
#
# On a GPU every operator is a kernel launch of several microseconds, so the per-cell schedule above (thousands of
# small operators per cell) would be bound by launches. Here the cells and heads of a batch together form the batch
# dimension of every matrix product, and a chunk of tokens is as large as a memory budget allows (one chunk for a
# full-length cell, two for a batch of 8), so a forward launches a few hundred kernels whatever the batch size.
# The key stabiliser stays per sample (a cell's output never depends on its batch). Instead of a running maximum, each
# chunk's key summary is taken relative to that chunk's own per-sample maximum, and the chunks are combined once at
# the end, each rescaled by exp(chunk maximum - sample maximum): the same exact rewrite with fewer operators per
# chunk. The other rewrites (epsilon summed separately, the ratio m^-1/2 left out, a column of ones appended to v) are
# those of the per-cell schedule. The stabilisers are constants for the backward pass.
# Tensors here are laid out (batch * heads, tokens, head_dim), heads major, so a chunk of tokens is a strided view.
# ---------------------------------------------------------------------------------------------------------------------

# Elements of one chunk's (batch x heads x tokens x features) feature map when the batched schedule picks the chunk
# size: 2**28 (1 GiB in float32), one chunk for a full-length cell, two for a batch of 8 at the published shapes.
BATCHED_CHUNK_ELEMENTS = 2**28


def batched_chunk_size(
    tokens: int, *, batch_size: int, num_heads: int, num_features: int, chunk_size: int | None = None
) -> int:
    """Tokens per chunk of the batched schedule: ``chunk_size`` if given, else as many as keep a chunk's feature map
    within ``BATCHED_CHUNK_ELEMENTS``, evened out so that the chunks of ``tokens`` have equal sizes."""
    if chunk_size is None:
        chunk_size = max(1, BATCHED_CHUNK_ELEMENTS // (batch_size * num_heads * num_features))
    num_chunks = math.ceil(tokens / chunk_size)
    return math.ceil(tokens / num_chunks) if num_chunks > 0 else chunk_size


def _half_squared_norms(x: torch.Tensor) -> torch.Tensor:
    """``|x|^2 d^-1/2 / 2`` per token, (..., tokens, d) -> (..., tokens, 1): the norm term of the exponent."""
    return (x * x).sum(dim=-1, keepdim=True).mul_(0.5 * x.shape[-1] ** -0.5)


def _per_sample(stabiliser: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(batch,) -> (batch * heads, 1, 1): one stabiliser per sample, repeated over its heads."""
    return stabiliser.repeat_interleave(num_heads).view(-1, 1, 1)


def _batched_key_exponentials(key, key_norms, projection_t, masked_out, num_heads, stabiliser=None):
    """``exp(k P^T - |k|^2 d^-1/2 / 2 - s)`` of a chunk of keys (batch * heads, tokens, features), zero at masked
    keys, and the per-sample stabiliser ``s`` (batch,): the chunk's own maximum of ``k P^T`` unless given."""
    projected = torch.bmm(key, projection_t.expand(key.shape[0], -1, -1))
    if masked_out is not None:
        projected.unflatten(0, (-1, num_heads)).masked_fill_(masked_out[:, None, :, None], float("-inf"))
    if stabiliser is None:
        # Clamped so that an all-masked chunk gives exp(-inf - lowest) = 0, not exp(-inf + inf) = nan.
        stabiliser = projected.flatten(1).unflatten(0, (-1, num_heads)).amax(dim=(1, 2))
        stabiliser = stabiliser.clamp_min_(torch.finfo(projected.dtype).min)
    return projected.sub_(key_norms + _per_sample(stabiliser, num_heads)).exp_(), stabiliser


def _batched_key_summary(key, value_ext, projection_t, masked_out, epsilon, num_heads, chunk_size):
    """``sum_j phi(k_j) [v_j, 1]^T`` (batch * heads, features, head_dim + 1) over unmasked keys, and the per-sample
    key stabiliser (batch,)."""
    key_norms = _half_squared_norms(key)
    summaries, stabilisers = [], []
    for start in range(0, key.shape[1], chunk_size):
        chunk = slice(start, start + chunk_size)
        exponentials, stabiliser = _batched_key_exponentials(
            key[:, chunk],
            key_norms[:, chunk],
            projection_t,
            None if masked_out is None else masked_out[:, chunk],
            num_heads,
        )
        summaries.append(torch.bmm(exponentials.transpose(1, 2), value_ext[:, chunk]))
        stabilisers.append(stabiliser)
    if len(summaries) == 1:
        summary, stabiliser = summaries[0], stabilisers[0]
    else:
        stabilisers = torch.stack(stabilisers)  # (chunks, batch)
        stabiliser = stabilisers.amax(dim=0)
        weights = torch.exp(stabilisers - stabiliser).repeat_interleave(num_heads, dim=1)  # (chunks, batch * heads)
        # A weighted sum, not an einsum: on a CPU the einsum's batched product copies each (features x d) block.
        summary = torch.stack(summaries).mul_(weights[:, :, None, None]).sum(dim=0)
    return summary.add_(value_ext.sum(dim=1, keepdim=True), alpha=epsilon), stabiliser


def _batched_attend(query, query_norms, projection_t, summary, epsilon):
    """Numerators and normalisers (batch * heads, tokens, head_dim + 1) of a chunk of queries, and their features."""
    projected = torch.bmm(query, projection_t.expand(query.shape[0], -1, -1))
    offset = projected.amax(dim=-1, keepdim=True).add_(query_norms)  # the per-token query stabiliser
    features = projected.sub_(offset).exp_().add_(epsilon)
    return torch.bmm(features, summary), features


class _BatchedFavorAttention(torch.autograd.Function):
    """FAVOR+ attention of a whole batch, chunked over tokens, with a backward that recomputes the feature maps.

    Inputs are (batch * heads, tokens, head_dim), and ``value_ext`` is v with a last column of ones, both zero at
    masked keys; ``projection_t`` is the random features scaled by ``head_dim ** -0.25``, transposed;
    ``masked_out`` is a boolean (batch, tokens), True at masked keys, or ``None``.
    """

    @staticmethod
    def forward(ctx, query, key, value_ext, projection_t, masked_out, epsilon, num_heads, chunk_size):
        summary, stabiliser = _batched_key_summary(
            key, value_ext, projection_t, masked_out, epsilon, num_heads, chunk_size
        )
        query_norms = _half_squared_norms(query)
        output = query.new_empty(query.shape)
        for start in range(0, query.shape[1], chunk_size):
            chunk = slice(start, start + chunk_size)
            ratios, _ = _batched_attend(query[:, chunk], query_norms[:, chunk], projection_t, summary, epsilon)
            torch.div(ratios[..., :-1], ratios[..., -1:], out=output[:, chunk])
        ctx.save_for_backward(query, key, value_ext, projection_t, masked_out, summary, stabiliser)
        ctx.epsilon, ctx.num_heads, ctx.chunk_size = epsilon, num_heads, chunk_size
        return output

    @staticmethod
    def backward(ctx, grad_output):
        with torch.autocast(device_type=grad_output.device.type, enabled=False):
            return _BatchedFavorAttention._backward(ctx, grad_output)

    @staticmethod
    def _backward(ctx, grad_output):
        query, key, value_ext, projection_t, masked_out, summary, stabiliser = ctx.saved_tensors
        epsilon, num_heads, chunk_size = ctx.epsilon, ctx.num_heads, ctx.chunk_size
        norm_scale = query.shape[-1] ** -0.5  # d(|x|^2 d^-1/2 / 2) / dx = x d^-1/2
        projection = projection_t.transpose(0, 1).expand(query.shape[0], -1, -1)

        # Queries: output = numerator / normaliser, both read off the chunk's features times the summary.
        query_norms = _half_squared_norms(query)
        grad_query = torch.empty_like(query)
        grad_summary = torch.zeros_like(summary)
        for start in range(0, query.shape[1], chunk_size):
            chunk = slice(start, start + chunk_size)
            q = query[:, chunk]
            ratios, features = _batched_attend(q, query_norms[:, chunk], projection_t, summary, epsilon)
            numerator, normaliser = ratios[..., :-1], ratios[..., -1:]
            grad_numerator = grad_output[:, chunk] / normaliser
            grad_normaliser = -(grad_numerator * numerator).sum(dim=-1, keepdim=True) / normaliser
            grad_ratios = torch.cat([grad_numerator, grad_normaliser], dim=-1)
            grad_summary.baddbmm_(features.transpose(1, 2), grad_ratios)
            grad_exponent = torch.bmm(grad_ratios, summary.transpose(1, 2)).mul_(features.sub_(epsilon))
            grad = torch.bmm(grad_exponent, projection).sub_(grad_exponent.sum(-1, keepdim=True) * q * norm_scale)
            grad_query[:, chunk] = grad

        # Keys and values: summary = sum_j (exp_j + epsilon) [v_j, 1]^T, with exp_j = 0 at masked keys.
        key_norms = _half_squared_norms(key)
        grad_key = torch.empty_like(key)
        grad_value_ext = torch.empty_like(value_ext)
        grad_epsilon = epsilon * grad_summary.sum(dim=1, keepdim=True)
        for start in range(0, key.shape[1], chunk_size):
            chunk = slice(start, start + chunk_size)
            k = key[:, chunk]
            exponentials, _ = _batched_key_exponentials(
                k,
                key_norms[:, chunk],
                projection_t,
                None if masked_out is None else masked_out[:, chunk],
                num_heads,
                stabiliser,
            )
            torch.baddbmm(grad_epsilon, exponentials, grad_summary, out=grad_value_ext[:, chunk])
            grad_exponent = torch.bmm(value_ext[:, chunk], grad_summary.transpose(1, 2)).mul_(exponentials)
            grad = torch.bmm(grad_exponent, projection).sub_(grad_exponent.sum(-1, keepdim=True) * k * norm_scale)
            grad_key[:, chunk] = grad
        return grad_query, grad_key, grad_value_ext, None, None, None, None, None


def batched_favor_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    projection: torch.Tensor,
    *,
    epsilon: float,
    chunk_size: int | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """FAVOR+ attention equal to ``linear_attention`` of ``softmax_kernel_features``, all samples at once.

    The same attention as :func:`chunked_favor_attention`, scheduled for accelerators: samples and heads form the
    batch dimension of the matrix products and the chunks of tokens are large, so the number of operators does not
    grow with the batch. The key stabiliser is still per sample.

    Args:
        query, key, value: ``(batch, tokens, heads, head_dim)``, the layout of the q/k/v projections.
        projection: Random features ``(num_features, head_dim)``.
        epsilon: Constant added after the exponential.
        chunk_size: Tokens per chunk (for the whole batch); ``None`` picks it with :func:`batched_chunk_size`.
            Changes speed and memory, not the result.
        mask: Optional boolean ``(batch, tokens)``, True where a token takes part as a key.

    Returns:
        Tensor of shape ``(batch, tokens, heads, head_dim)``.
    """
    batch_size, tokens, num_heads, head_dim = query.shape
    chunk_size = batched_chunk_size(
        tokens, batch_size=batch_size, num_heads=num_heads, num_features=projection.shape[0], chunk_size=chunk_size
    )
    # The feature maps are exponentials of projections: computed in at least float32 (see chunked_favor_attention).
    dtype = query.dtype
    compute_dtype = torch.promote_types(dtype, torch.float32)
    with torch.autocast(device_type=query.device.type, enabled=False):
        projection_t = (projection.to(compute_dtype) * head_dim**-0.25).transpose(0, 1)

        def heads_major(x: torch.Tensor) -> torch.Tensor:
            return x.to(compute_dtype).transpose(1, 2).reshape(batch_size * num_heads, tokens, -1)

        if mask is None:
            masked_out = None
            ones = query.new_ones((), dtype=compute_dtype).expand(batch_size, tokens, num_heads, 1)
            value_ext = torch.cat([value.to(compute_dtype), ones], dim=-1)
        else:
            masked_out = ~mask
            column = mask.to(compute_dtype)[:, :, None, None].expand(batch_size, tokens, num_heads, 1)
            value_ext = torch.cat([value.to(compute_dtype), column], dim=-1).masked_fill(
                masked_out[:, :, None, None], 0.0
            )
        output = _BatchedFavorAttention.apply(
            heads_major(query),
            heads_major(key),
            heads_major(value_ext),
            projection_t,
            masked_out,
            epsilon,
            num_heads,
            chunk_size,
        )
    return output.unflatten(0, (batch_size, num_heads)).transpose(1, 2).to(dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------------


def resolve_attention_schedule(config: ScBertConfig, device: torch.device) -> str:
    """The schedule a forward on ``device`` runs: ``config.attention_schedule``, or when it is ``None``,
    ``"per_cell"`` on a CPU and ``"batched"`` on any accelerator."""
    if config.attention_schedule is not None:
        return config.attention_schedule
    return "per_cell" if device.type == "cpu" else "batched"


class ScBertFrozenGeneEmbedding(nn.Module):
    """A fixed gene table (gene2vec in the published model), kept as a persistent buffer.

    A buffer, not a parameter with ``requires_grad=False``: it is saved and loaded like a weight but can never be
    unfrozen by loading, by an optimiser or by a distributed wrapper. The last row, for the appended token, is zero.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim), persistent=True)

    def forward(self, gene_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(gene_ids, self.weight)


class ScBertEmbeddings(nn.Module):
    """Expression-token embedding plus a per-gene embedding (gene2vec in the published model)."""

    def __init__(self, config: ScBertConfig):
        super().__init__()
        self.expression_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.gene_embedding_type == "frozen":
            self.gene_embeddings = ScBertFrozenGeneEmbedding(config.sequence_length, config.hidden_size)
        else:
            self.gene_embeddings = nn.Embedding(config.sequence_length, config.hidden_size)
        self.dropout = nn.Dropout(config.embedding_dropout_prob)

    def forward(self, input_ids: torch.Tensor, gene_ids: torch.Tensor | None = None) -> torch.Tensor:
        if gene_ids is None:
            gene_embeddings = self.gene_embeddings.weight[: input_ids.shape[1]].unsqueeze(0)
        else:
            gene_embeddings = self.gene_embeddings(gene_ids)
        embeddings = self.expression_embeddings(input_ids) + gene_embeddings.to(
            self.expression_embeddings.weight.dtype
        )
        return self.dropout(embeddings)


class ScBertSelfAttention(nn.Module):
    """Multi-head FAVOR+ self-attention.

    q/k/v map ``hidden_size`` to ``num_attention_heads * head_dim`` without bias; the output projection has a bias.
    The random features are a persistent buffer: saved and loaded with the weights, and changed only by
    :meth:`redraw_random_features`, never inside ``forward``.
    """

    def __init__(self, config: ScBertConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        inner_size = config.num_attention_heads * config.head_dim
        self.query = nn.Linear(config.hidden_size, inner_size, bias=False)
        self.key = nn.Linear(config.hidden_size, inner_size, bias=False)
        self.value = nn.Linear(config.hidden_size, inner_size, bias=False)
        self.output = nn.Linear(inner_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.register_buffer(
            "random_features", torch.empty(config.num_random_features, config.head_dim), persistent=True
        )

    @torch.no_grad()
    def redraw_random_features(self, generator: torch.Generator | None = None) -> None:
        """Replace the random features with a fresh draw (in place, keeping device and dtype)."""
        fresh = draw_orthogonal_random_features(
            self.config.num_random_features,
            self.head_dim,
            generator=generator,
            device=self.random_features.device,
            dtype=self.random_features.dtype,
        )
        self.random_features.copy_(fresh)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if resolve_attention_schedule(self.config, hidden_states.device) == "batched":
            return self._batched(hidden_states, attention_mask)
        if not torch.is_grad_enabled():
            return self._stream(hidden_states, attention_mask)
        # One cell at a time: q, k and v (3 x tokens x 640 floats per cell) then exist for one cell only, and a
        # full-length cell still gives the projections thousands of rows.
        outputs = []
        # split, not indexing: the backward of an indexed read is a zero-filled gradient the size of the batch.
        for sample, cell in enumerate(hidden_states.split(1)):
            query, key, value = (
                projection(cell).unflatten(-1, (self.num_heads, self.head_dim))
                for projection in (self.query, self.key, self.value)
            )
            context = chunked_favor_attention(
                query,
                key,
                value,
                self.random_features,
                epsilon=self.config.kernel_epsilon,
                chunk_size=self.config.attention_chunk_size or ATTENTION_CHUNK_TOKENS,
                mask=None if attention_mask is None else attention_mask[sample : sample + 1],
            )
            outputs.append(self.output(context.flatten(-2)))
        return self.dropout(torch.cat(outputs))

    def _batched(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """All cells together, for accelerators (see :func:`batched_favor_attention`)."""
        query, key, value = (
            projection(hidden_states).unflatten(-1, (self.num_heads, self.head_dim))
            for projection in (self.query, self.key, self.value)
        )
        context = batched_favor_attention(
            query,
            key,
            value,
            self.random_features,
            epsilon=self.config.kernel_epsilon,
            chunk_size=self.config.attention_chunk_size,
            mask=attention_mask,
        )
        return self.dropout(self.output(context.flatten(-2)))

    @torch.no_grad()
    def _stream(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Inference: the same attention with q, k and v projected chunk by chunk, so that no (tokens x heads x
        head_dim) tensor exists for a whole cell; only the small key summary is kept between the two passes."""
        chunk_size = self.config.attention_chunk_size or ATTENTION_CHUNK_TOKENS
        epsilon = self.config.kernel_epsilon
        compute_dtype = torch.promote_types(hidden_states.dtype, torch.float32)
        output = torch.empty_like(hidden_states)

        def project(layer: nn.Linear, rows: torch.Tensor) -> torch.Tensor:
            return layer(rows).unflatten(-1, (self.num_heads, self.head_dim)).to(compute_dtype)

        def key_chunks(cell, mask):
            for start in range(0, cell.shape[0], chunk_size):
                rows = cell[start : start + chunk_size]
                yield (
                    project(self.key, rows),
                    project(self.value, rows),
                    None if mask is None else mask[start : start + chunk_size],
                )

        for sample in range(hidden_states.shape[0]):
            cell = hidden_states[sample]
            mask = None if attention_mask is None else attention_mask[sample]
            with torch.autocast(device_type=cell.device.type, enabled=False):
                projection = self.random_features.to(compute_dtype) * self.head_dim**-0.25
                summary, _ = _key_summary(key_chunks(cell, mask), projection, epsilon)
                for start in range(0, cell.shape[0], chunk_size):
                    rows = cell[start : start + chunk_size]
                    query = project(self.query, rows).transpose(0, 1)
                    ratios, _ = _attend_chunk(query, projection, summary, epsilon)
                    context = (ratios[..., :-1] / ratios[..., -1:]).transpose(0, 1).flatten(-2)
                    output[sample, start : start + chunk_size] = self.output(context.to(hidden_states.dtype))
        return self.dropout(output)


class ScBertFeedForward(nn.Module):
    def __init__(self, config: ScBertConfig):
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.output(self.activation(self.intermediate(hidden_states))))


class ScBertLayer(GradientCheckpointingLayer):
    """Pre-LayerNorm block: ``x + Attention(LN(x))``, then ``x + FeedForward(LN(x))``."""

    def __init__(self, config: ScBertConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ScBertSelfAttention(config)
        self.feed_forward_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = ScBertFeedForward(config)
        self.config = config
        self.chunk_size = config.attention_chunk_size or ATTENTION_CHUNK_TOKENS

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = hidden_states + self.attention(self.attention_norm(hidden_states), attention_mask)

        # Position-wise, so done in chunks of tokens. Per cell: a cell and a chunk at a time, so that the
        # (tokens x intermediate_size) temporaries stay in cache whatever the batch size. Batched: the whole batch in
        # chunks of tokens within the batched schedule's element budget. Chunks are split views, never indexed slices:
        # the backward of each slice read or write would make a zero-filled gradient the size of the whole batch.
        if resolve_attention_schedule(self.config, hidden_states.device) == "batched":
            batch_size, tokens, _ = hidden_states.shape
            chunk_size = self.config.attention_chunk_size or max(
                1, BATCHED_CHUNK_ELEMENTS // (batch_size * self.config.intermediate_size)
            )

            def chunks(tensor: torch.Tensor) -> list[torch.Tensor]:
                return list(tensor.split(chunk_size, dim=1))

            join_dim = 1
        else:

            def chunks(tensor: torch.Tensor) -> list[torch.Tensor]:
                return [chunk for cell in tensor.unbind(0) for chunk in cell.split(self.chunk_size)]

            join_dim = 0
        if torch.is_grad_enabled():
            outputs = [chunk + self.feed_forward(self.feed_forward_norm(chunk)) for chunk in chunks(hidden_states)]
            return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=join_dim)).view_as(hidden_states)
        output = torch.empty_like(hidden_states)
        for chunk, target in zip(chunks(hidden_states), chunks(output)):
            torch.add(chunk, self.feed_forward(self.feed_forward_norm(chunk)), out=target)
        return output


class ScBertEncoder(nn.Module):
    def __init__(self, config: ScBertConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([ScBertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        per_cell = resolve_attention_schedule(self.config, hidden_states.device) == "per_cell"
        if per_cell and not torch.is_grad_enabled() and hidden_states.shape[0] > 1:
            # Inference: one cell through all layers at a time keeps every temporary cell-sized, so a batch costs
            # what its cells cost one by one (large batch-wide activations would fall out of cache).
            cells = [
                self(
                    hidden_states[i : i + 1],
                    None if attention_mask is None else attention_mask[i : i + 1],
                    output_hidden_states,
                )
                for i in range(hidden_states.shape[0])
            ]
            all_hidden_states = None
            if output_hidden_states:
                all_hidden_states = tuple(torch.cat(states) for states in zip(*(cell[1] for cell in cells)))
            return torch.cat([cell[0] for cell in cells]), all_hidden_states
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        return hidden_states, all_hidden_states


class ScBertPreTrainedModel(PreTrainedModel):
    config_class = ScBertConfig
    config: ScBertConfig
    base_model_prefix = "scbert"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ScBertLayer"]
    # The heads return a mean loss over their own items. Without this, the Trainer (transformers 5) would treat
    # forward as accepting loss kwargs and multiply the loss by the number of processes under DDP.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ScBertSelfAttention):
            fresh = draw_orthogonal_random_features(
                module.config.num_random_features, module.head_dim, device=module.random_features.device
            )
            init.copy_(module.random_features, fresh)
        elif isinstance(module, ScBertFrozenGeneEmbedding):
            table = torch.randn_like(module.weight) * self.config.initializer_range
            table[-1] = 0.0  # the appended token has no gene
            init.copy_(module.weight, table)

    @torch.no_grad()
    def redraw_random_features(self, generator: torch.Generator | None = None) -> None:
        """Draw new FAVOR+ random features for every attention layer.

        This is the only place the features change. During training, ``ScBertFeatureRedrawCallback`` calls it every
        ``config.feature_redraw_interval`` optimisation steps with a generator seeded identically on every process, so
        that distributed replicas keep the same features.
        """
        for module in self.modules():
            if isinstance(module, ScBertSelfAttention):
                module.redraw_random_features(generator=generator)


def _validate_inputs(config: ScBertConfig, input_ids: torch.Tensor, gene_ids: torch.Tensor | None) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"`input_ids` must have shape (batch, tokens), got {tuple(input_ids.shape)}.")
    if gene_ids is None and input_ids.shape[1] > config.sequence_length:
        raise ValueError(
            f"`input_ids` has {input_ids.shape[1]} positions but the model's panel has {config.num_genes} genes + 1 "
            f"appended token = {config.sequence_length}. Tokenize with the model's own tokenizer."
        )
    if gene_ids is not None and gene_ids.shape != input_ids.shape:
        raise ValueError(
            f"`gene_ids` shape {tuple(gene_ids.shape)} must equal `input_ids` shape {tuple(input_ids.shape)}."
        )


class ScBertModel(ScBertPreTrainedModel):
    """The bare scBERT encoder: embeddings, Performer layers and the final LayerNorm.

    ``last_hidden_state`` is the output of the final LayerNorm (the published ``return_encodings=True``).
    ``hidden_states`` (with ``output_hidden_states=True``) holds the embeddings and each layer's output, before the
    final LayerNorm.
    """

    def __init__(self, config: ScBertConfig):
        super().__init__(config)
        self.embeddings = ScBertEmbeddings(config)
        self.encoder = ScBertEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.expression_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.expression_embeddings = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        gene_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutput:
        r"""
        Args:
            input_ids: Expression tokens, ``(batch, tokens)``; ``tokens`` is ``num_genes + 1`` for full cells.
            attention_mask: ``(batch, tokens)``, 1 for positions that take part and 0 for padding. Masked positions
                change nothing for the others.
            gene_ids: Optional ``(batch, tokens)`` indices into the gene table, for inputs that hold a subset of the
                panel. By default position ``i`` is panel gene ``i``.
            output_hidden_states: Also return the embeddings and every layer's output.
        """
        _validate_inputs(self.config, input_ids, gene_ids)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        mask = None if attention_mask is None else attention_mask.to(torch.bool)
        hidden_states = self.embeddings(input_ids, gene_ids)
        hidden_states, all_hidden_states = self.encoder(hidden_states, mask, output_hidden_states)
        return BaseModelOutput(last_hidden_state=self.final_layer_norm(hidden_states), hidden_states=all_hidden_states)


class ScBertForMaskedLM(ScBertPreTrainedModel):
    """scBERT with the masked-expression head: a linear map from each position to the expression tokens."""

    def __init__(self, config: ScBertConfig):
        super().__init__(config)
        self.scbert = ScBertModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        gene_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> MaskedLMOutput:
        r"""
        Args:
            labels: ``(batch, tokens)`` original tokens at the masked positions and -100 elsewhere; the loss is the
                mean cross-entropy over positions whose label is not -100.
        """
        outputs = self.scbert(
            input_ids, attention_mask=attention_mask, gene_ids=gene_ids, output_hidden_states=output_hidden_states
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss(ignore_index=-100)(logits.view(-1, logits.shape[-1]), labels.view(-1))
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class ScBertConvClassificationHead(nn.Module):
    """The published fine-tuning head.

    Each position is projected to one score (the published ``Conv2d(1, 1, (1, hidden_size))``, here the equivalent
    ``Linear(hidden_size, 1)``) and passed through a ReLU (``config.classifier_score_activation``); the
    ``num_genes + 1`` scores of a cell feed an MLP (512 -> 128 by default, ``config.classifier_hidden_act`` after
    each: ReLU as published) and a final linear layer to the labels.
    """

    def __init__(self, config: ScBertConfig):
        super().__init__()
        self.sequence_length = config.sequence_length
        self.token_projection = nn.Linear(config.hidden_size, 1)
        self.score_activation = ACT2FN[config.classifier_score_activation]
        sizes = [config.sequence_length, *config.classifier_hidden_sizes]
        self.hidden_layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:]))
        self.input_dropout = nn.Dropout(config.classifier_input_dropout)
        self.hidden_activation = ACT2FN[config.classifier_hidden_act]
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.out_proj = nn.Linear(sizes[-1], config.num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if hidden_states.shape[1] != self.sequence_length:
            raise ValueError(
                f"The 'conv' classification head reads all {self.sequence_length} positions (panel + appended token), "
                f"got {hidden_states.shape[1]}. Use full-length inputs, or `classifier_type='pooled'`."
            )
        scores = self.score_activation(self.token_projection(hidden_states).squeeze(-1))
        if attention_mask is not None:
            scores = scores * attention_mask.to(scores.dtype)
        scores = self.input_dropout(scores)
        for layer in self.hidden_layers:
            scores = self.dropout(self.hidden_activation(layer(scores)))
        return self.out_proj(scores)


class ScBertPooledClassificationHead(nn.Module):
    """A length-independent head: the mean of the final encodings over unmasked positions, then an MLP."""

    def __init__(self, config: ScBertConfig):
        super().__init__()
        sizes = [config.hidden_size, *config.classifier_hidden_sizes]
        self.hidden_layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:]))
        self.input_dropout = nn.Dropout(config.classifier_input_dropout)
        self.hidden_activation = ACT2FN[config.classifier_hidden_act]
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.out_proj = nn.Linear(sizes[-1], config.num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.input_dropout(pool_cell_embeddings(hidden_states, attention_mask))
        for layer in self.hidden_layers:
            pooled = self.dropout(self.hidden_activation(layer(pooled)))
        return self.out_proj(pooled)


def pool_cell_embeddings(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``(batch, tokens, hidden)`` encodings over the positions where ``attention_mask`` is 1."""
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class ScBertForSequenceClassification(ScBertPreTrainedModel):
    """scBERT with a cell-level classification head (cell-type annotation)."""

    def __init__(self, config: ScBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.scbert = ScBertModel(config)
        if config.classifier_type == "conv":
            self.classifier = ScBertConvClassificationHead(config)
        else:
            self.classifier = ScBertPooledClassificationHead(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        gene_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> SequenceClassifierOutput:
        r"""
        Args:
            labels: ``(batch,)`` class indices (single-label), ``(batch, num_labels)`` floats (multi-label), or
                floats for regression, following ``config.problem_type`` as in transformers' other models.
        """
        outputs = self.scbert(
            input_ids, attention_mask=attention_mask, gene_ids=gene_ids, output_hidden_states=output_hidden_states
        )
        logits = self.classifier(outputs.last_hidden_state, attention_mask)
        loss = None
        if labels is not None:
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif self.num_labels > 1 and labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"
            if self.config.problem_type == "regression":
                loss_fct = MSELoss()
                loss = (
                    loss_fct(logits.squeeze(), labels.squeeze()) if self.num_labels == 1 else loss_fct(logits, labels)
                )
            elif self.config.problem_type == "single_label_classification":
                loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = BCEWithLogitsLoss()(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


# ---------------------------------------------------------------------------------------------------------------------
# Gene attention: how much attention each token receives in a layer, read off FAVOR+ in linear time.
#
# With A_ij = phi(q_i) . phi(k_j) / D_i and D_i = phi(q_i) . sum_l phi(k_l) (the rows of the attention matrix sum to
# one), the attention token j receives, averaged over the queries i, is
#     (1/n) sum_i A_ij = phi(k_j) . u,   u = (1/n) sum_i phi(q_i) / D_i,
# so one pass over the keys (sum_l phi(k_l)), one over the queries (u) and one more over the keys give every token's
# score in O(n m) per head; the n x n matrix is never formed. The features are the layer's own: its query and key
# projections, its random features, its epsilon and the same stabilisers as `softmax_kernel_features` (per token for
# queries, per sample for keys; a stabiliser does not cancel, because epsilon is added after the exponential). The
# ratio m^-1/2 appears in both numerator and D_i and is left out. Masked tokens receive nothing and, as queries, are
# left out of the mean.
# ---------------------------------------------------------------------------------------------------------------------


class _LayerInputCaptured(Exception):
    """Raised by :func:`gene_attention`'s hook once the chosen layer's attention input is seen: the rest of the
    forward pass is not needed."""


def _bare_encoder(model: ScBertPreTrainedModel) -> "ScBertModel":
    """The `ScBertModel` inside a model with a head, or inside a peft wrapper of one."""
    if hasattr(model, "get_base_model"):  # peft's PeftModel
        model = model.get_base_model()
    return model.base_model


def _attention_module(model: ScBertPreTrainedModel, layer: int) -> "ScBertSelfAttention":
    encoder_layers = _bare_encoder(model).encoder.layers
    index = layer + len(encoder_layers) if layer < 0 else layer
    if not 0 <= index < len(encoder_layers):
        raise ValueError(
            f"layer={layer} does not exist: the model has {len(encoder_layers)} layers (0 to "
            f"{len(encoder_layers) - 1}, or -1 for the last)."
        )
    return encoder_layers[index].attention


def _projected(layer: nn.Linear, rows: torch.Tensor, attention: "ScBertSelfAttention", projection: torch.Tensor):
    """Queries or keys of a chunk of tokens -> ``d^-1/4 x . w`` (heads, tokens, features) and the per-token offset
    ``|x|^2 d^-1/2 / 2`` (heads, tokens, 1), in the projection's dtype."""
    x = layer(rows).unflatten(-1, (attention.num_heads, attention.head_dim)).transpose(0, 1).to(projection.dtype)
    data_normalizer = attention.head_dim**-0.25
    offset = (x * x).sum(dim=-1, keepdim=True).mul_(0.5 * data_normalizer**2)
    return torch.matmul(x, projection.transpose(0, 1) * data_normalizer), offset


@torch.no_grad()
def _token_attention(
    attention: "ScBertSelfAttention", hidden: torch.Tensor, mask: torch.Tensor | None, chunk_size: int
) -> torch.Tensor:
    """Attention received by each token of one cell, ``hidden`` being the attention's input (tokens, hidden_size):
    mean over the (unmasked) queries and over the heads, float32 (tokens,). Feature maps are built in place, chunk by
    chunk, exactly as `softmax_kernel_features` builds them (tested against it)."""
    compute_dtype = torch.promote_types(hidden.dtype, torch.float32)
    projection = attention.random_features.to(compute_dtype)
    epsilon = attention.config.kernel_epsilon
    tokens = hidden.shape[0]
    chunks = [slice(start, start + chunk_size) for start in range(0, tokens, chunk_size)]
    lowest = torch.finfo(compute_dtype).min

    def keys(chunk: slice):
        projected, offset = _projected(attention.key, hidden[chunk], attention, projection)
        if mask is not None:
            projected.masked_fill_(~mask[chunk][None, :, None], float("-inf"))  # masked keys: exp(-inf) = 0
        return projected, offset

    # Pass 1, keys: sum_l exp(. - M) with the sample's maximum M found on the way (running rescale, as online softmax).
    maximum = torch.full((), float("-inf"), dtype=compute_dtype, device=hidden.device)
    exp_sum = torch.zeros(attention.num_heads, projection.shape[0], dtype=compute_dtype, device=hidden.device)
    for chunk in chunks:
        projected, offset = keys(chunk)
        new_maximum = torch.maximum(maximum, projected.amax())
        exp_sum.mul_(torch.exp(maximum.clamp_min(lowest) - new_maximum.clamp_min(lowest)))
        maximum = new_maximum
        exp_sum += projected.sub_(offset.add_(maximum.clamp_min(lowest))).exp_().sum(dim=1)
    num_keys = tokens if mask is None else int(mask.sum())
    key_sum = exp_sum.add_(epsilon * num_keys)  # sum_l phi(k_l) without the ratio m^-1/2, (heads, features)

    # Pass 2, queries: u = (1/n) sum_i phi(q_i) / D_i over the queries that take part. The per-token stabiliser is
    # the query's maximum over its features; the ratio m^-1/2 cancels in phi(q_i) / D_i and is left out.
    weighted = torch.zeros_like(key_sum)
    for chunk in chunks:
        rows = hidden[chunk] if mask is None else hidden[chunk][mask[chunk]]
        projected, offset = _projected(attention.query, rows, attention, projection)
        offset.add_(projected.amax(dim=-1, keepdim=True))
        features = projected.sub_(offset).exp_().add_(epsilon)
        weighted += features.div_(torch.matmul(features, key_sum.unsqueeze(-1))).sum(dim=1)
    num_queries = tokens if mask is None else int(mask.sum())
    weighted /= max(num_queries, 1)

    # Pass 3, keys again: phi(k_j) . u, averaged over the heads; masked keys get exactly 0.
    scores = torch.empty(tokens, dtype=torch.float32, device=hidden.device)
    for chunk in chunks:
        projected, offset = keys(chunk)
        features = projected.sub_(offset.add_(maximum.clamp_min(lowest))).exp_()
        if mask is None:
            features.add_(epsilon)
        else:
            features.add_(mask[chunk][None, :, None].to(compute_dtype), alpha=epsilon)
        scores[chunk] = torch.matmul(features, weighted.unsqueeze(-1)).squeeze(-1).mean(dim=0).float()
    return scores


@torch.no_grad()
def gene_attention(
    model: ScBertPreTrainedModel,
    input_ids: torch.Tensor,
    *,
    layer: int = -1,
    attention_mask: torch.Tensor | None = None,
    gene_ids: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The attention each token receives in one layer, averaged over the queries and over the heads.

    This is the column mean of the layer's FAVOR+ attention matrix (rows normalised to one), computed from the
    model's own projections, random features and stabilisers in ``O(tokens x num_random_features)`` per head and
    cell, chunk by chunk, so a full-length cell (16,907 tokens) never needs its ``tokens x tokens`` matrix. The model
    runs in evaluation mode (no dropout) up to the chosen layer only; its training mode is restored afterwards.

    Args:
        model: Any scBERT model (`ScBertModel` or a model with a head).
        input_ids: Expression tokens, ``(batch, tokens)``.
        layer: Which layer's attention (0-based; negative counts from the end, ``-1`` is the last).
        attention_mask: ``(batch, tokens)``, 1 for positions that take part. Masked positions receive 0 and are left
            out of the mean over queries.
        gene_ids: As for the model's ``forward``.
        chunk_size: Tokens per chunk; changes memory and speed, not the result. The layer's
            ``config.attention_chunk_size`` (or 512) by default.

    Returns:
        float32 tensor ``(batch, tokens)``; each cell's row sums to 1 (over its unmasked tokens).

    Raises:
        ValueError: If ``layer`` does not exist or the inputs have the wrong shape.
    """
    attention = _attention_module(model, layer)
    base = _bare_encoder(model)
    _validate_inputs(base.config, input_ids, gene_ids)
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"`attention_mask` shape {tuple(attention_mask.shape)} must equal `input_ids` shape "
            f"{tuple(input_ids.shape)}."
        )
    chunk_size = chunk_size or base.config.attention_chunk_size or ATTENTION_CHUNK_TOKENS
    captured: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def capture(module, args, kwargs):
        hidden = args[0]
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        captured.append((hidden, mask))
        raise _LayerInputCaptured

    was_training = model.training
    model.eval()
    handle = attention.register_forward_pre_hook(capture, with_kwargs=True)
    scores = torch.empty(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    try:
        # One cell at a time: the hook stops the forward pass at the chosen layer.
        for cell in range(input_ids.shape[0]):
            rows = slice(cell, cell + 1)
            with contextlib.suppress(_LayerInputCaptured):
                base(
                    input_ids[rows],
                    attention_mask=None if attention_mask is None else attention_mask[rows],
                    gene_ids=None if gene_ids is None else gene_ids[rows],
                )
            hidden, mask = captured.pop()
            mask = None if mask is None else mask[0].to(torch.bool)
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                scores[cell] = _token_attention(attention, hidden[0], mask, chunk_size)
    finally:
        handle.remove()
        model.train(was_training)
    return scores


__all__ = [
    "ScBertForMaskedLM",
    "ScBertForSequenceClassification",
    "ScBertModel",
    "ScBertPreTrainedModel",
    "batched_favor_attention",
    "draw_orthogonal_random_features",
    "gene_attention",
    "linear_attention",
    "pool_cell_embeddings",
    "softmax_kernel_features",
]
