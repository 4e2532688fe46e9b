"""Batches of cells for a model (tokenization/cell_batches.py): every row once, in order, as the tokenizer encodes
it, with its detected panel genes; the reading is planned (and refused) when the batches are asked for."""

import numpy as np
import pytest
import scipy.sparse as sp

from tests.test_annotation_annotate import GENES, make_adata
from tokenization import ScBertTokenizer
from tokenization.cell_batches import cell_batches


def test_batches_cover_the_rows_in_order_with_their_input_ids_and_detected_genes():
    adata = make_adata(23)
    counts = adata.X.toarray()
    counts[3] = 0
    counts[5, 2:] = 0
    adata.X = sp.csr_matrix(counts)
    tokenizer = ScBertTokenizer(GENES)
    expected = tokenizer(adata)["input_ids"]
    batches = list(cell_batches(tokenizer, adata, batch_size=4, chunk_size=10, start=2, end=21))
    # Batches never cross a chunk: chunks 2-12 and 12-21, each cut into fours.
    assert [(b.start, b.end) for b in batches] == [(2, 6), (6, 10), (10, 12), (12, 16), (16, 20), (20, 21)]
    np.testing.assert_array_equal(np.concatenate([b.input_ids.numpy() for b in batches]), expected[2:21])
    detected = np.concatenate([b.detected_genes for b in batches])
    np.testing.assert_array_equal(detected, (counts[2:21] > 0).sum(1))
    assert detected[1] == 0 and detected[3] == 2
    start, end, input_ids, detected_genes = batches[0]  # a plain 4-tuple too
    assert input_ids.dtype.is_floating_point is False and detected_genes.dtype == np.int64


def test_the_reading_is_planned_and_refused_when_the_batches_are_asked_for():
    other = make_adata(5, genes=[f"OTHER{j}" for j in range(12)])
    with pytest.raises(ValueError, match="Only 0 of 12 panel genes"):
        cell_batches(ScBertTokenizer(GENES), other)  # no batch taken yet
    with pytest.raises(ValueError, match="batch_size must be at least 1; got 0"):
        cell_batches(ScBertTokenizer(GENES), make_adata(5), batch_size=0)
