"""The HTML report opened in a real browser (headless Debian `chromium`, network off): every figure renders,
the page logs no console error, requests nothing but its own file, and a script planted in a trace's
kernel, operator or annotation names never runs (the page's state is checked after load, not its bytes).

Skipped only where chromium is absent and this is not CI; under CI=true (`.ci/run` installs chromium) a
missing browser fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli, shared_trace_path, trace_files
from headless_chromium import Chromium, PageResult, find_chromium, in_ci
from synthetic_kineto import planted_rank
from synthetic_run import StepPlan, write_synthetic_run

READY = "document.documentElement.dataset.figuresDrawn !== undefined"
PROBES = {
    "figures": "document.querySelectorAll('script[type=\"application/json\"][data-fig]').length",
    "drawn": "Number(document.documentElement.dataset.figuresDrawn)",
    "plots_with_svg": "Array.from(document.querySelectorAll('.js-plotly-plot'))"
    ".filter(d => d.querySelector('.main-svg') && d.querySelector('.main-svg').getBBox().width > 0).length",
    "main_svgs": "document.querySelectorAll('.main-svg').length",
    "pwned": "typeof window.pwned",
    "text": "document.body.innerText",
    "planted_elements": "document.querySelectorAll('img[src=x], svg[onload], body script:not([nonce]):not([type])').length",
}
# What a hostile trace plants: each would set window.pwned if it ever ran.
HOSTILE = {
    "kernel": "<script>window.pwned=1</script>gemm_kernel\"'",
    "operator": 'aten::</script><img src=x onerror="window.pwned=2">',
    "annotation": "log_metrics <svg onload=window.pwned=3> & 'quotes' \"dq\"",
}


@pytest.fixture(scope="module")
def browser() -> Chromium:
    if find_chromium() is None:
        if in_ci():
            pytest.fail("chromium is missing in CI: .ci/run must install Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs these tests")
    with Chromium() as b:
        yield b


def report(*runs: Path, out: Path) -> Path:
    proc = run_cli("report", *runs, "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


def open_page(browser: Chromium, path: Path) -> PageResult:
    return browser.open(path, ready=READY, evaluate=PROBES)


def assert_clean_render(page: PageResult, path: Path) -> None:
    v = page.values
    assert page.errors == [], page.errors
    assert v["figures"] >= 5 and v["drawn"] == v["figures"]
    assert v["plots_with_svg"] == v["figures"]  # every figure drew an SVG with a size
    assert v["main_svgs"] >= v["figures"]
    assert page.requests == [path.resolve().as_uri()], page.requests  # nothing but the file itself
    assert v["pwned"] == "undefined"


def test_real_gpu_trace_report(browser: Chromium, tmp_path: Path) -> None:
    run = tmp_path / "run"
    traces = trace_files(shared_trace_path("trace_filter"))
    assert run_cli("import", *traces, "--out", run).returncode == 0
    path = report(run, out=tmp_path / "report.html")
    page = open_page(browser, path)
    assert_clean_render(page, path)
    text = page.values["text"]
    for heading in ("Where the time goes", "What if", "Timeline", "Compatibility views", "Overview"):
        assert heading in text


def test_run_with_time_series_and_diff(browser: Chromium, tmp_path: Path) -> None:
    base = write_synthetic_run(tmp_path / "base", steps=60, ranks=3, gpu=True)
    cand = write_synthetic_run(
        tmp_path / "cand", steps=60, ranks=3, gpu=True, slow_rank=None, plan=StepPlan(data_ms=4.0)
    )
    path = report(base, out=tmp_path / "report.html")
    page = open_page(browser, path)
    assert_clean_render(page, path)
    assert "GPU utilization (NVML)" in page.values["text"] and "Storage read rate" in page.values["text"]
    diff = report(base, cand, out=tmp_path / "diff.html")
    page = open_page(browser, diff)
    assert_clean_render(page, diff)
    assert "candidate − base" in page.values["text"]


def test_names_from_a_trace_never_run(browser: Chromium, tmp_path: Path) -> None:
    tr = planted_rank(3)
    for e in tr.events:
        if e.get("cat") == "kernel" and not e["name"].startswith("ncclKernel"):
            e["name"] = HOSTILE["kernel"]
        elif e.get("name") in ("aten::linear", "aten::clone"):
            e["name"] = HOSTILE["operator"]
        elif e.get("name") == "log_metrics":
            e["name"] = HOSTILE["annotation"]
    trace = tr.write(tmp_path / "rank0.json.gz")
    run = tmp_path / "run"
    assert run_cli("import", trace, "--out", run).returncode == 0
    path = report(run, out=tmp_path / "report.html")
    page = open_page(browser, path)
    assert_clean_render(page, path)
    assert page.values["planted_elements"] == 0
    # the names are on the page as text (the evidence table), exactly as the trace wrote them
    shown = page.values["text"]
    assert HOSTILE["operator"] in shown or HOSTILE["annotation"] in shown
    # ...and as text in the timeline's hover label too (plotly renders a few tags: ours are escaped)
    hover = browser.open(
        path,
        ready=READY,
        evaluate={
            "label": """(() => {
                const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
                for (const div of plots) {
                  for (let c = 0; c < div.data.length; c++) {
                    const texts = div.data[c].hovertext || [];
                    const i = texts.findIndex(t => String(t).includes('pwned=1'));
                    if (i >= 0) {
                      Plotly.Fx.hover(div, [{curveNumber: c, pointNumber: i}]);
                      return div.querySelector('.hoverlayer').textContent;
                    }
                  }
                }
                return null;
            })()""",
            "pwned": "typeof window.pwned",
        },
    )
    assert hover.values["label"] is not None and "<script>window.pwned=1</script>" in hover.values["label"]
    assert hover.values["pwned"] == "undefined" and hover.errors == []


def test_a_corpus_of_hostile_names_never_runs(browser: Chromium, tmp_path: Path) -> None:
    """The security corpus (tests/support/hostile_names.py: script tags, event handlers, javascript: URLs,
    template injection, markup, escape sequences) as a trace's names and as a watched job's span, stage and
    tag names: each report renders cleanly and nothing planted runs or becomes an element."""
    from hostile_names import HOSTILE as CORPUS
    from hostile_names import hostile_runs

    for run in hostile_runs(tmp_path).values():
        path = report(run, out=tmp_path / f"{run.name}.html")
        page = open_page(browser, path)
        assert_clean_render(page, path)
        assert page.values["planted_elements"] == 0
        assert sum(h in page.values["text"] for h in CORPUS if h.isprintable()) >= 3  # shown as text
