"""The novelty score (tokenization.novelty): it ranks a type the reference lacks first, its calibration means a flag
rate, it survives saving, and it refuses what does not fit."""

import numpy as np
import pytest
import scipy.sparse as sp

from tokenization.novelty import (
    DEFAULT_NOVELTY_THRESHOLD,
    NOVELTY_FILE,
    SPREAD_FLOOR,
    ClassStatistics,
    NoveltyDetector,
)

NUM_GENES = 60


def _cells(rng, profile, n):
    """Log-normalised-like values: Poisson counts around a profile, log1p."""
    return np.log1p(rng.poisson(profile, size=(n, len(profile)))).astype(np.float32)


def _profiles(rng):
    """Three known types with their own marker genes, and a new type that is the first known type with the markers
    of a fourth program (resembles a known type everywhere else)."""
    base = rng.uniform(0.5, 2.0, NUM_GENES)
    known = []
    for k in range(3):
        profile = base.copy()
        profile[10 * k : 10 * k + 5] += 6.0
        known.append(profile)
    new = known[0].copy()
    new[40:44] += 6.0  # four genes that no known type expresses
    new[0:5] -= 5.5  # and it lacks the first type's markers
    return known, np.clip(new, 0.05, None)


def _fitted(rng, known, *, n_train=200, n_calibration=300):
    statistics = ClassStatistics.empty(len(known), NUM_GENES)
    for k, profile in enumerate(known):
        statistics.add(sp.csr_matrix(_cells(rng, profile, n_train)), np.full(n_train, k))
    detector = statistics.detector(["A", "B", "C"])
    calibration = np.concatenate([_cells(rng, profile, n_calibration // len(known)) for profile in known])
    detector.calibrate(detector.raw_scores(calibration))
    return detector, statistics


def test_a_type_left_out_of_the_reference_is_ranked_first():
    rng = np.random.default_rng(0)
    known, new = _profiles(rng)
    detector, _ = _fitted(rng, known)
    query = np.concatenate([*(_cells(rng, profile, 100) for profile in known), _cells(rng, new, 30)])
    is_new = np.r_[np.zeros(300, bool), np.ones(30, bool)]
    novelty = detector.scores(sp.csr_matrix(query))
    assert novelty.dtype == np.float32 and ((novelty >= 0) & (novelty < 1)).all()
    # The 30 most novel cells are the new type's.
    assert is_new[np.argsort(-novelty)[:30]].all()
    assert (novelty[is_new] >= DEFAULT_NOVELTY_THRESHOLD).mean() > 0.9


def test_the_default_threshold_flags_at_most_about_five_percent_of_cells_like_the_reference():
    rng = np.random.default_rng(1)
    known, _ = _profiles(rng)
    detector, _ = _fitted(rng, known, n_calibration=1500)
    fresh = np.concatenate([_cells(rng, profile, 1000) for profile in known])
    flagged = (detector.scores(fresh) >= DEFAULT_NOVELTY_THRESHOLD).mean()
    # Conformal p-values: at most 5% in expectation; 3,000 cells put the sampling spread near 0.4%.
    assert 0.02 < flagged < 0.065


def test_the_distance_is_the_formula_of_the_module_for_sparse_and_dense_values():
    rng = np.random.default_rng(2)
    known, _ = _profiles(rng)
    detector, statistics = _fitted(rng, known)
    cells = _cells(rng, known[1], 7)
    means = statistics.sums / statistics.counts[:, None]
    within = (statistics.squares - statistics.sums * means).sum(axis=0) / statistics.counts.sum()
    expected = np.stack([(((cells - m) ** 2) / (within + SPREAD_FLOOR)).mean(axis=1) for m in means], axis=1)
    np.testing.assert_allclose(detector.distances(cells), expected, rtol=1e-4)
    np.testing.assert_allclose(detector.distances(sp.csr_matrix(cells)), expected, rtol=1e-4)


def test_a_saved_detector_loads_with_the_same_scores(tmp_path):
    rng = np.random.default_rng(3)
    known, new = _profiles(rng)
    detector, _ = _fitted(rng, known)
    detector.facts = {"held_out_flagged": 0.04}
    path = detector.save(tmp_path)
    assert path == tmp_path / NOVELTY_FILE
    loaded = NoveltyDetector.load(tmp_path)
    assert loaded.class_names == ["A", "B", "C"] and loaded.facts == {"held_out_flagged": 0.04}
    assert loaded.calibration_cells == detector.calibration_cells
    query = _cells(rng, new, 5)
    np.testing.assert_array_equal(loaded.scores(query), detector.scores(query))


def test_a_folder_without_a_detector_has_none(tmp_path):
    assert NoveltyDetector.load(tmp_path) is None


def test_a_damaged_or_foreign_detector_file_is_refused(tmp_path):
    (tmp_path / NOVELTY_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot be read"):
        NoveltyDetector.load(tmp_path)
    rng = np.random.default_rng(4)
    detector, _ = _fitted(rng, _profiles(rng)[0])
    with pytest.raises(ValueError, match="belongs to another model"):
        detector.check_classes(["A", "B", "D"], source="model")
    with pytest.raises(ValueError, match="60 panel genes"):
        detector.scores(np.zeros((2, 59), np.float32))


def test_an_uncalibrated_detector_refuses_to_score():
    rng = np.random.default_rng(5)
    statistics = ClassStatistics.empty(2, NUM_GENES)
    statistics.add(_cells(rng, np.ones(NUM_GENES), 10), np.r_[np.zeros(5, int), np.ones(5, int)])
    detector = statistics.detector(["A", "B"])
    with pytest.raises(ValueError, match="not calibrated"):
        detector.scores(np.zeros((1, NUM_GENES), np.float32))


def test_a_class_without_training_cells_has_no_profile_and_is_never_the_nearest():
    rng = np.random.default_rng(6)
    known, _ = _profiles(rng)
    statistics = ClassStatistics.empty(3, NUM_GENES)
    statistics.add(_cells(rng, known[0], 50), np.zeros(50, int))
    statistics.add(_cells(rng, known[2], 50), np.full(50, 2))
    detector = statistics.detector(["A", "B", "C"])  # a model's class B that this run has no cells of
    distances = detector.distances(_cells(rng, known[1], 5))
    assert np.isinf(distances[:, 1]).all() and np.isfinite(distances[:, [0, 2]]).all()
    with pytest.raises(ValueError, match="at least two training cells"):
        ClassStatistics.empty(2, NUM_GENES).detector(["A", "B"])
