"""The engine's median and percentile equal numpy's to the last bit (they only skip numpy 2's import of
numpy.ma), and leave numpy.ma unimported."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gpuwatch.attribution.order_stats import median, percentile


@pytest.mark.parametrize("seed", range(40))
def test_equal_to_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    for values in (
        rng.random(n) * 10.0 ** int(rng.integers(-3, 9)),
        rng.integers(0, 10**12, n),
        rng.integers(0, 5, n).astype(np.float64),  # ties
    ):
        assert median(values) == float(np.median(values))
        for q in (0, 1, 10, 25, 50, 75, 90, 99, 100, 33.3):
            assert percentile(values, q) == float(np.percentile(values, q)), (n, q)


def test_numpy_ma_stays_unimported() -> None:
    code = (
        "import sys, numpy as np\n"
        "from gpuwatch.attribution.order_stats import median, percentile\n"
        "v = np.arange(11.0)\n"
        "median(v), percentile(v, 90), median(v[:10])\n"
        "print('numpy.ma' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
