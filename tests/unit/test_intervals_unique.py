"""The engine's sort-based distinct values agree with numpy's own np.unique (which hashes, and is ~80x slower
on a million int64 boundaries with numpy 2)."""

from __future__ import annotations

import numpy as np
import pytest

from gpuwatch.attribution.intervals import unique_first_inverse, unique_sorted


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000, 20000])
@pytest.mark.parametrize("high", [3, 1 << 40])
def test_same_as_numpy(n: int, high: int) -> None:
    values = np.random.default_rng(n).integers(-high, high, n, dtype=np.int64)
    want_u, want_first, want_inv = np.unique(values, return_index=True, return_inverse=True)
    got_u, got_first, got_inv = unique_first_inverse(values)
    np.testing.assert_array_equal(got_u, want_u)
    np.testing.assert_array_equal(got_first, want_first)  # the first occurrence, as numpy gives
    np.testing.assert_array_equal(got_inv, want_inv.reshape(-1))
    np.testing.assert_array_equal(unique_sorted(values), want_u)
