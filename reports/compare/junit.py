"""The compare verdict as a JUnit XML report (the Surefire/Jenkins format that GitHub, GitLab, Jenkins and
most CI test-report viewers read): one testcase per job check, a <failure> per regression, <skipped> for a
check that is not gated, and one <error> testcase when the runs cannot be compared or there are too few
steps to decide."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from reports.compare.model import Check, Comparison, Outcome, Verdict
from reports.compare.text import check_label, format_change, format_value

SUITE = "gpuwatch compare"
CLASSNAME = "gpuwatch.compare"


def render_junit(cmp: Comparison, *, now: datetime | None = None) -> str:
    """The XML document (UTF-8 declaration included)."""
    cases = [_case(c, cmp) for c in cmp.job_checks()]
    if cmp.verdict in (Verdict.INCOMPARABLE, Verdict.UNDECIDED):
        case = ET.Element(
            "testcase", name="comparable" if cmp.verdict is Verdict.INCOMPARABLE else "enough steps"
        )
        case.set("classname", CLASSNAME)
        case.set("time", "0")
        err = ET.SubElement(case, "error", type=cmp.verdict.value, message="; ".join(cmp.reasons))
        err.text = "\n".join(cmp.reasons)
        cases.append(case)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    errors = sum(1 for c in cases if c.find("error") is not None)
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    counts = {
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": str(errors),
        "skipped": str(skipped),
    }
    root = ET.Element("testsuites", {"name": SUITE, "time": "0"})
    suite = ET.SubElement(root, "testsuite", {"name": SUITE})
    for key, value in counts.items():
        suite.set(key, value)
        if key != "skipped":  # <testsuites> carries no skipped count in the Surefire format
            root.set(key, value)
    suite.set("time", "0")
    suite.set("timestamp", (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S"))
    suite.set("hostname", socket.gethostname() or "localhost")
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("base", cmp.base.label),
        ("base_run_id", cmp.base.run_id),
        ("candidate", cmp.cand.label),
        ("candidate_run_id", cmp.cand.run_id),
        ("verdict", cmp.verdict.value),
        ("steps_compared", str(cmp.steps_compared)),
    ):
        ET.SubElement(props, "property", name=name, value=value)
    suite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _case(c: Check, cmp: Comparison) -> ET.Element:
    case = ET.Element("testcase", name=check_label(c))
    case.set("classname", CLASSNAME)
    case.set("time", "0")
    line = (
        f"{check_label(c)}: {format_value(c, c.base)} -> {format_value(c, c.cand)}, change {format_change(c, c.change)} "
        f"({100 * cmp.thresholds.confidence:.0f}% interval {format_change(c, c.change_low)} to "
        f"{format_change(c, c.change_high)}), limit {'none' if c.limit is None else format_change(c, c.limit)}"
    )
    if c.outcome is Outcome.REGRESSED:
        fail = ET.SubElement(case, "failure", type="regression", message=line)
        grown = [e for e in cmp.evidence if e.category == c.metric]
        fail.text = "\n".join(
            [line]
            + [
                f"rank {e.rank} {e.name}: "
                f"{'-' if e.base_ms_per_step is None else f'{e.base_ms_per_step:.1f}'} -> "
                f"{e.cand_ms_per_step:.1f} ms/step"
                for e in grown
            ]
        )
    elif c.outcome is Outcome.NOT_GATED:
        ET.SubElement(
            case, "skipped", message=f"not gated on CPU-only runs (give a limit to gate it): {line}"
        )
    else:
        out = ET.SubElement(case, "system-out")
        out.text = f"{c.outcome.value}: {line}"
    return case
