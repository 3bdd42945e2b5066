"""`covered` decides each point against a brute-force reference on both of its paths: the binary search of
each point (few or unsorted points) and the running count over sorted points (`_covered_sorted`)."""

from __future__ import annotations

import numpy as np
import pytest

from gpuwatch.attribution import intervals as iv


def _brute(starts: np.ndarray, ends: np.ndarray, points: np.ndarray) -> np.ndarray:
    return ((points[:, None] >= starts[None, :]) & (points[:, None] < ends[None, :])).any(axis=1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_points", [10, iv._SORTED_POINTS_MIN + 1, 3 * iv._SORTED_POINTS_MIN])
def test_covered_equals_brute_force_on_sorted_and_unsorted_points(seed: int, n_points: int) -> None:
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 50_000, 300)
    ends = s + rng.integers(0, 400, 300)  # some empty, many overlapping: union makes them a set
    ivs = iv.union(s, ends)
    # points on the edges themselves (inclusive start, exclusive end) and between them, with repeats
    points = np.concatenate([ivs[0], ivs[1], ivs[0] - 1, rng.integers(-10, 51_000, n_points)])
    want_sorted = _brute(ivs[0], ivs[1], np.sort(points))
    np.testing.assert_array_equal(iv.covered(ivs, np.sort(points)), want_sorted)
    np.testing.assert_array_equal(iv.covered(ivs, points), _brute(ivs[0], ivs[1], points))


def test_the_sorted_path_counts_overlapping_intervals() -> None:
    """Intervals that overlap (not a set `union` made) still cover what any one of them covers."""
    starts, ends = np.array([0, 5, 6]), np.array([20, 8, 7])
    points = np.arange(-2, 25)
    got = iv._covered_sorted(starts, ends, points)
    np.testing.assert_array_equal(got, (points >= 0) & (points < 20))


def test_the_sorted_path_is_taken_for_many_sorted_points(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = []
    real = iv._covered_sorted
    monkeypatch.setattr(iv, "_covered_sorted", lambda *a: taken.append(1) or real(*a))
    ivs = iv.union(np.array([10, 40]), np.array([20, 50]))
    iv.covered(ivs, np.arange(iv._SORTED_POINTS_MIN))
    assert taken
    taken.clear()
    iv.covered(ivs, np.arange(iv._SORTED_POINTS_MIN)[::-1].copy())
    assert not taken


def test_the_sorted_path_with_intervals_that_end_beyond_the_points() -> None:
    ivs = iv.union(np.array([-50, 3, 90]), np.array([-40, 7, 500]))
    points = np.arange(0, 100)
    np.testing.assert_array_equal(iv._covered_sorted(*ivs, points), _brute(*ivs, points))
