"""Pure text rendering for the dashboard: stacked budget bars, sparklines, numbers with their units.

Nothing here knows textual; every function takes plain values and returns rich `Text`, so the widgets stay
dumb and the shapes are testable on their own.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from gpuwatch.attribution.summary import CATEGORY_NAMES, CategoryValues

CATEGORY_STYLE: dict[str, str] = {
    "compute": "green",
    "data_loading": "yellow",
    "cpu_preprocessing": "magenta",
    "sync": "red",
    "checkpoint_io": "blue",
    "memcpy": "cyan",
    "host_overhead": "white",
    "unattributed": "bright_black",
}
"""One color per budget category, the same in every panel."""

SPARK = "▁▂▃▄▅▆▇█"


def shares(values: Sequence[float], width: int) -> list[int]:
    """Split `width` cells among `values` in proportion, whole cells summing to `width` (largest remainder)."""
    total = sum(v for v in values if v > 0)
    if width <= 0 or total <= 0:
        return [0] * len(values)
    exact = [max(v, 0.0) * width / total for v in values]
    cells = [int(x) for x in exact]
    left = width - sum(cells)
    for i in sorted(range(len(values)), key=lambda i: (-(exact[i] - cells[i]), i))[:left]:
        cells[i] += 1
    return cells


def stacked_bar(budget_pct: CategoryValues, width: int) -> Text:
    """The eight categories side by side in their colors, `width` cells wide."""
    values = [budget_pct.get(c) for c in CATEGORY_NAMES]
    out = Text()
    for name, n in zip(CATEGORY_NAMES, shares(values, width), strict=True):
        if n:
            out.append("█" * n, style=CATEGORY_STYLE[name])
    if not out.plain:
        out.append("·" * width, style="bright_black")
    return out


def legend() -> Text:
    out = Text()
    for name in CATEGORY_NAMES:
        out.append("■ ", style=CATEGORY_STYLE[name])
        out.append(name + "  ")
    return out


def sparkline(values: Sequence[float], width: int, *, style: str = "", floor_zero: bool = True) -> Text:
    """The last values as block characters, one per cell; more values than cells are averaged in bins."""
    vals = [v for v in values if v == v]  # NaN: not available
    if not vals or width <= 0:
        return Text("")
    if len(vals) > width:  # mean of each of `width` equal bins
        edges = [round(i * len(vals) / width) for i in range(width + 1)]
        vals = [sum(vals[a:b]) / (b - a) for a, b in zip(edges, edges[1:], strict=False) if b > a]
    lo = 0.0 if floor_zero else min(vals)
    hi = max(vals)
    if hi <= lo:
        return Text(SPARK[0 if hi <= 0 else 3] * len(vals), style=style)
    return Text("".join(SPARK[min(7, int((v - lo) / (hi - lo) * 7.999))] for v in vals), style=style)


def trend(first: Sequence[float], second: Sequence[float]) -> Text:
    """The change of a share between the older and the newer half of a window, in percentage points."""
    if not first or not second:
        return Text("")
    delta = sum(second) / len(second) - sum(first) / len(first)
    if abs(delta) < 0.5:
        return Text("  =", style="bright_black")
    arrow, style = ("▲", "bold") if delta > 0 else ("▼", "")
    return Text(f"{arrow}{abs(delta):4.1f}", style=style)


def pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.1f}%"


def ms(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    return f"{value:.1f} ms"


def size_short(value: float | None, suffix: str = "") -> str:
    """Bytes in at most five characters and a unit letter: `1.5G`, `820M`, `12K`."""
    if value is None:
        return "n/a"
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if abs(value) >= scale:
            v = value / scale
            return (f"{v:.1f}" if v < 100 else f"{v:.0f}") + unit + suffix
    return f"{value:.0f}B" + suffix


def pct_short(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def run_time(t_s: float | None) -> str:
    """A time on the run's clock (seconds since its start), fixed width: `   12.3s`."""
    return " " * 8 if t_s is None else f"{t_s:7.1f}s"
