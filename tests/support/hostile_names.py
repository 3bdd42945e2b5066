"""A corpus of hostile names (XSS, SQL injection, terminal markup and escape sequences, format strings,
bidi overrides) and the ways to plant them: in a profiler trace's names and path fields, and in a watched
program's spans, stages and tags. Used by tests/integration/test_security.py and test_report_browser.py.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from conftest import run_cli, run_program
from synthetic_kineto import planted_rank

# Each XSS payload would set window.pwned if it ever ran (the browser test checks that).
HOSTILE = (
    "<script>window.pwned=1</script>",
    '"><img src=x onerror="window.pwned=2">',
    "<svg onload=window.pwned=3>",
    "javascript:window.pwned=4",
    "</textarea></style></script><iframe srcdoc='<script>parent.pwned=5</script>'>",
    "{{constructor.constructor('window.pwned=6')()}}",
    "'); DROP TABLE spans; --",
    "x' OR '1'='1",
    "\"; ATTACH '/tmp/evil.db' AS evil; --",
    "[/]",
    "[bold red]styled[/bold red] [link=https://evil.example]click[/link]",
    "\x1b[2J\x1b]0;retitled\x07\x1b[31mred",
    "%s%n{0}${HOME}$(id)`id`",
    "\u202eevil\u202c ＜script＞",
)


def hostile_trace(path: Path, canary: Path | None = None, steps: int = 3) -> Path:
    """A planted trace whose names are the corpus (and, with `canary`, paths to it in every field a path
    could be in)."""
    tr = planted_rank(steps)
    names = iter(HOSTILE * 50)
    renamed: dict[str, str] = {}
    for e in tr.events:
        name = e.get("name")
        if e.get("ph") == "X" and isinstance(name, str) and not name.startswith(("ProfilerStep", "nccl")):
            if name not in renamed and len(renamed) < len(HOSTILE):
                renamed[name] = next(names)
            e["name"] = renamed.get(name, name)
        if canary is not None and e.get("ph") == "X":
            e.setdefault("args", {})
            if isinstance(e["args"], dict):
                e["args"].update({"File": str(canary), "Source": f"{canary}:12", "stack": [str(canary)]})
    data = json.loads(gzip.decompress(tr.write(path).read_bytes()))
    if canary is not None:
        data["traceName"] = str(canary)
        data["deviceProperties"] = [{"id": 0, "name": str(canary)}]
        data.setdefault("distributedInfo", {})["pg_config"] = str(canary)
        data["traceEvents"].append(
            {"ph": "X", "cat": "python_function", "name": f"{canary}(12): train", "pid": 1, "tid": 1,
             "ts": data["traceEvents"][0].get("ts", 0), "dur": 1}
        )  # fmt: skip
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    return path


WATCHED = """
import json, sys
import gpuwatch
H = json.loads(sys.argv[1])
with gpuwatch.watch("run", flush_interval_s=0.1) as gw:
    for i in range(3 * len(H)):
        for h in H:
            with gpuwatch.span(h, category="cpu_preprocessing"):
                sum(j * j for j in range(2000))
        gw.step(stage=H[i % len(H)], tags={"source": H[(i + 1) % len(H)]})
"""


def hostile_runs(tmp: Path) -> dict[str, Path]:
    """An imported run with the corpus as its names, and a watched one (WATCHED) with it as span, stage and tag
    names, both written under `tmp`."""
    imported = tmp / "imported"
    assert run_cli("import", hostile_trace(tmp / "rank0.json.gz"), "--out", imported).returncode == 0
    proc = run_program([sys.executable, "-c", WATCHED, json.dumps(HOSTILE)], cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return {"imported": imported, "watched": tmp / "run"}
