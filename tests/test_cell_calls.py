"""The per-cell call rule (tokenization/cell_calls.py) on hand-made probabilities: the most likely class, its
probability, and "Unassigned" with its reason for low confidence and for cells without signal in the panel."""

import numpy as np
import pytest

from tokenization.cell_calls import UNASSIGNED, UNASSIGNED_REASONS, call_cells

CLASSES = ["B", "T", "NK"]
PROBABILITIES = np.array(
    [
        [0.7, 0.2, 0.1],  # B, confident
        [0.1, 0.3, 0.6],  # NK, just above 0.55
        [0.4, 0.4, 0.2],  # a tie: the first class, below 0.55
        [0.2, 0.5, 0.3],  # T, below 0.55
        [0.9, 0.05, 0.05],  # confident, but no panel counts
        [0.05, 0.9, 0.05],  # confident, but two detected genes (few, with min_genes=3)
        [0.3, 0.3, 0.4],  # low confidence and few genes: the reason is the more fundamental one
        [0.1, 0.1, 0.8],  # exactly min_genes detected genes: enough
    ],
    dtype=np.float32,
)
DETECTED = np.array([10, 10, 10, 10, 0, 2, 1, 3])


def test_every_cell_gets_its_most_likely_class_and_that_probability():
    calls = call_cells(PROBABILITIES[:4], CLASSES, detected_genes=DETECTED[:4], min_genes=3)
    assert calls.best.tolist() == [0, 2, 0, 1] and calls.best.dtype == np.int64
    np.testing.assert_array_equal(calls.confidence, np.float32([0.7, 0.6, 0.4, 0.5]))
    assert calls.confidence.dtype == np.float32
    assert calls.labels.tolist() == ["B", "NK", "B", "T"]
    assert calls.reasons.tolist() == [None] * 4 and not calls.unassigned.any()


def test_threshold_and_low_signal_give_unassigned_with_the_most_fundamental_reason():
    calls = call_cells(PROBABILITIES, CLASSES, detected_genes=DETECTED, min_genes=3, unassigned_threshold=0.55)
    assert calls.reasons.tolist() == [
        None,
        None,
        "low confidence",
        "low confidence",
        "no panel counts",
        "few panel genes",
        "few panel genes",
        None,
    ]
    assert calls.labels.tolist() == ["B", "NK", UNASSIGNED, UNASSIGNED, UNASSIGNED, UNASSIGNED, UNASSIGNED, "NK"]
    # The confidence and the best class are kept for unassigned cells.
    assert calls.best.tolist() == [0, 2, 0, 1, 0, 1, 2, 2]
    np.testing.assert_allclose(calls.confidence, PROBABILITIES.max(1))
    assert calls.unassigned.tolist() == [False, False, True, True, True, True, True, False]
    assert [calls.count(reason) for reason in UNASSIGNED_REASONS] == [0, 1, 2, 0, 2]


def test_without_a_threshold_only_cells_without_signal_are_unassigned():
    calls = call_cells(PROBABILITIES, CLASSES, detected_genes=DETECTED, min_genes=3)
    assert calls.labels.tolist() == ["B", "NK", "B", "T", UNASSIGNED, UNASSIGNED, UNASSIGNED, "NK"]
    # min_genes=0: a cell with any count is enough; a cell with none never is.
    calls = call_cells(PROBABILITIES, CLASSES, detected_genes=DETECTED, min_genes=0)
    assert calls.reasons.tolist() == [None, None, None, None, "no panel counts", None, None, None]
    # A threshold of 0 unassigns nothing by confidence; of 1, every cell below certainty.
    assert (
        call_cells(PROBABILITIES, CLASSES, detected_genes=DETECTED, min_genes=0, unassigned_threshold=0).count(
            "low confidence"
        )
        == 0
    )
    everything = call_cells(PROBABILITIES, CLASSES, detected_genes=DETECTED, min_genes=0, unassigned_threshold=1)
    assert everything.unassigned.all()


def test_no_cells_and_shapes_that_do_not_fit():
    calls = call_cells(np.zeros((0, 3), np.float32), CLASSES, detected_genes=np.zeros(0, int), min_genes=3)
    assert calls.labels.shape == calls.reasons.shape == calls.best.shape == (0,)
    with pytest.raises(ValueError, match=r"shape \(cells, 3\) for 3 classes; got \(8, 2\)"):
        call_cells(PROBABILITIES[:, :2], CLASSES, detected_genes=DETECTED, min_genes=3)
    with pytest.raises(ValueError, match=r"one entry per cell, shape \(8,\); got \(7,\)"):
        call_cells(PROBABILITIES, CLASSES, detected_genes=DETECTED[:7], min_genes=3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_non_finite_probabilities_never_become_a_label(bad, threshold):
    probabilities = np.array([[0.9, 0.1], [bad, 0.2], [np.nan, np.nan], [0.3, 0.7]], dtype=np.float32)
    calls = call_cells(
        probabilities, ["B", "T"], detected_genes=np.full(4, 50), min_genes=1, unassigned_threshold=threshold
    )
    assert calls.labels.tolist() == ["B", UNASSIGNED, UNASSIGNED, "T"]
    assert calls.reasons[1] == calls.reasons[2] == "non-finite probabilities"
    assert np.isnan(calls.confidence[1:3]).all() and calls.confidence[0] == pytest.approx(0.9)


def test_a_novel_cell_is_a_novel_type_before_low_confidence_and_after_low_signal():
    novelty = np.array([0.99, 0.2, 0.97, 0.1, 0.99, 0.1, 0.1, 0.95], dtype=np.float32)
    calls = call_cells(
        PROBABILITIES,
        CLASSES,
        detected_genes=DETECTED,
        min_genes=3,
        unassigned_threshold=0.55,
        novelty=novelty,
        novelty_threshold=0.95,
    )
    assert calls.reasons.tolist() == [
        "novel type",  # confident, but unlike every reference type
        None,
        "novel type",  # novel and low confidence: novel type says more
        "low confidence",
        "no panel counts",  # no signal: its novelty means nothing
        "few panel genes",
        "few panel genes",
        "novel type",  # at the threshold counts
    ]
    assert calls.labels[0] == UNASSIGNED and calls.best[0] == 0  # the best class is kept


def test_a_novelty_threshold_without_novelty_scores_is_refused():
    with pytest.raises(ValueError, match="no novelty detector"):
        call_cells(PROBABILITIES, CLASSES, detected_genes=DETECTED, min_genes=3, novelty_threshold=0.95)
    with pytest.raises(ValueError, match="one entry per cell"):
        call_cells(
            PROBABILITIES, CLASSES, detected_genes=DETECTED, min_genes=3, novelty=np.zeros(3), novelty_threshold=0.9
        )
