"""Clock offsets between hosts from matched collectives (attribution/clock_align.py), on a synthetic
two-host run with a planted skew: recovered exactly, shown per rank, and the cross-rank waits are those of
the same run without the skew."""

from __future__ import annotations

from pathlib import Path

import pytest
from labeled_run import MS, LabeledPlan, write_labeled_run

from gpuwatch.attribution.clock_align import estimate_offsets
from gpuwatch.attribution.summary import Summary, load_summary

SKEW_NS = -7 * MS - 123_456  # host-b's clock runs 7.12 ms behind: larger than the planted waits


def plan(skew: int, hosts: bool = True) -> LabeledPlan:
    # rank 1 (host-b) draws the costly source every third step: rank 0 waits for it then
    draws = [["image", "video_hr" if i % 3 == 0 else "image"] for i in range(12)]
    return LabeledPlan(
        draws=draws,
        stages=[None] * 12,
        source_ms={"image": 2.0, "video_hr": 6.0},
        anchor_offset_ns={1: skew},
        hosts={0: "host-a", 1: "host-b"} if hosts else {},
    )


def summary(tmp: Path, name: str, p: LabeledPlan) -> Summary:
    return load_summary(write_labeled_run(tmp / name, p), use_cache=False)


def test_a_planted_skew_is_recovered_and_the_waits_match_the_unskewed_run(tmp_path: Path) -> None:
    skewed = summary(tmp_path, "skewed", plan(SKEW_NS))
    truth = summary(tmp_path, "truth", plan(0))
    assert [r.clock_offset_ms for r in skewed.ranks] == [0.0, pytest.approx(SKEW_NS / 1e6, abs=1e-6)]
    assert [r.clock_offset_ms for r in truth.ranks] == [0.0, 0.0]
    for a, b in zip(skewed.ranks, truth.ranks):
        assert a.sync_split_pct.wait == pytest.approx(b.sync_split_pct.wait, abs=1e-6)
    assert skewed.straggler is not None and truth.straggler is not None
    assert skewed.straggler.rank == truth.straggler.rank == 1
    assert skewed.straggler.caused_wait_ms == pytest.approx(truth.straggler.caused_wait_ms)
    assert any("clocks:" in n and "-7.123 ms" in n for n in skewed.notes)
    assert Summary.from_json(skewed.to_json()).to_json() == skewed.to_json()


def test_without_alignment_the_skew_would_invert_who_waits(tmp_path: Path) -> None:
    """The same skew on one host (no clock domains to align): the figures are wrong, which is why."""
    wrong = summary(tmp_path, "one-host", plan(SKEW_NS, hosts=False))
    truth = summary(tmp_path, "truth", plan(0))
    assert wrong.ranks[1].clock_offset_ms == 0.0
    assert wrong.straggler is not None and wrong.straggler.rank == 0  # rank 1 looks early: it "waits"
    assert truth.ranks[0].sync_split_pct.wait > 4 and wrong.ranks[0].sync_split_pct.wait == 0.0


def test_an_estimate_pulled_off_by_late_recorded_ends_is_kept_within_what_the_collectives_prove() -> None:
    """Rank 1 (host-b, clock 5 ms behind) arrives last at every collective, 4 ms after rank 0; both leave
    it 0.1 ms after it arrived. A busy host-a records rank 0's end 1.5 ms late in 2 of every 3 collectives,
    so the median of end times says -6.4 ms. The collectives where it did not prove the offset is at least
    -5.1 ms (rank 1 entered before rank 0 left)."""
    skew, late = -5 * MS, 1_500_000
    arrivals = {}
    for i in range(12):
        t0 = i * 20 * MS
        end = t0 + 4 * MS + 100_000
        arrivals[i] = {
            0: (t0, end + (late if i % 3 else 0), i),
            1: (t0 + 4 * MS + skew, end + skew, i),
        }
    median_only = sorted(arrivals[i][1][1] - arrivals[i][0][1] for i in arrivals)[6]
    assert median_only == skew - late  # what the median alone would say
    clocks = estimate_offsets(arrivals, {0: "host-a", 1: "host-b"})
    assert clocks.offsets_ns == {0: 0, 1: skew - 100_000}  # the bound: within the 0.1 ms transfer
    # bounds that contradict each other (a collective matched wrongly) leave the median as it was
    arrivals[99] = {0: (0, 1, 0), 1: (50 * MS, 51 * MS, 0)}
    assert estimate_offsets(arrivals, {0: "host-a", 1: "host-b"}).offsets_ns[1] == skew - late
