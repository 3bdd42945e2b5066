"""Bad input through the real command line: one line on stderr, the documented exit code, no traceback,
nothing on stdout. And every command's --help explains itself."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import run_cli
from synthetic_kineto import planted_rank

from gpuwatch.cli.main import COMMANDS

USAGE, RUNTIME = 2, 1


def assert_one_line_error(proc, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def good_trace(tmp_path: Path) -> Path:
    return planted_rank(2).write(tmp_path / "good.pt.trace.json.gz")


def test_truncated_gzip(tmp_path: Path, good_trace: Path) -> None:
    data = good_trace.read_bytes()
    bad = tmp_path / "cut.pt.trace.json.gz"
    bad.write_bytes(data[: len(data) // 2])
    line = assert_one_line_error(run_cli("import", bad, "--out", tmp_path / "run"), RUNTIME, str(bad))
    assert "gzip" in line
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("rank*"))


def test_gzip_of_cut_json(tmp_path: Path, good_trace: Path) -> None:
    """A complete gzip stream whose JSON inside stops half way (the profiler was killed while exporting)."""
    text = gzip.decompress(good_trace.read_bytes())
    bad = tmp_path / "half.json.gz"
    bad.write_bytes(gzip.compress(text[: len(text) // 2]))
    assert_one_line_error(run_cli("import", bad, "--out", tmp_path / "run"), RUNTIME, "not valid JSON")


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json at all", "not valid JSON"),
        ("", "empty"),
        ('{"a": 1, "b": [1, 2]}', "not a PyTorch profiler trace"),
        ("[1, 2, 3]", "not a PyTorch profiler trace"),
        ('{"traceEvents": "nope"}', "not a PyTorch profiler trace"),
        ('{"traceEvents": []}', "no trace events"),
        ('{"traceEvents": [{"ph": "M", "name": "process_name", "pid": 1}]}', "no complete"),
        ('"just a string"', "not a PyTorch profiler trace"),
    ],
)
def test_not_a_trace(tmp_path: Path, content: str, needle: str) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(content)
    assert_one_line_error(run_cli("import", bad, "--out", tmp_path / "run"), RUNTIME, needle)


def test_empty_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("import", empty, "--out", tmp_path / "run"), USAGE, "no .json")


def test_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json.gz"
    assert_one_line_error(run_cli("import", missing, "--out", tmp_path / "run"), USAGE, "no such file")


def test_out_already_holds_a_run(tmp_path: Path, good_trace: Path) -> None:
    assert run_cli("import", good_trace, "--out", tmp_path / "run").returncode == 0
    assert_one_line_error(
        run_cli("import", good_trace, "--out", tmp_path / "run"), USAGE, "already holds a run"
    )


def test_out_is_a_file(tmp_path: Path, good_trace: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert_one_line_error(run_cli("import", good_trace, "--out", f), USAGE, "not a directory")


def test_run_dir_of_another_schema_version(tmp_path: Path, good_trace: Path) -> None:
    run = tmp_path / "run"
    assert run_cli("import", good_trace, "--out", run).returncode == 0
    marker = run / "gpuwatch-run.json"
    data = json.loads(marker.read_text())
    data["schema_version"] = 999
    marker.write_text(json.dumps(data))
    assert_one_line_error(run_cli("summary", run, "--json"), RUNTIME, "schema 999")


@pytest.mark.parametrize("what", ["plain_dir", "file", "missing"])
def test_summary_of_something_that_is_not_a_run(tmp_path: Path, what: str) -> None:
    target = tmp_path / "target"
    if what == "plain_dir":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
    elif what == "file":
        target.write_text("{}")
    assert_one_line_error(run_cli("summary", target, "--json"), USAGE, str(target))


def test_summary_of_a_run_with_no_writer_yet(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "gpuwatch-run.json").write_text(
        json.dumps({"format": "gpuwatch-run", "schema_version": _schema(), "run_id": "abc"})
    )
    assert_one_line_error(run_cli("summary", run), RUNTIME, "no data yet")


def test_corrupt_writer_record(tmp_path: Path, good_trace: Path) -> None:
    run = tmp_path / "run"
    assert run_cli("import", good_trace, "--out", run).returncode == 0
    (writer,) = run.glob("rank*/writer.json")
    writer.write_text("{half")
    assert_one_line_error(run_cli("summary", run), RUNTIME, "writer.json")


def test_corrupt_segment(tmp_path: Path, good_trace: Path) -> None:
    run = tmp_path / "run"
    assert run_cli("import", good_trace, "--out", run).returncode == 0
    (seg,) = run.glob("rank*/spans-*.parquet")
    seg.write_bytes(seg.read_bytes()[:100])
    assert_one_line_error(run_cli("summary", run, "--json"), RUNTIME, "cannot read run")


@pytest.mark.parametrize(
    "argv",
    [
        ["import", "x.json"],  # --out missing
        ["nonsense-command"],
        ["summary"],
        ["summary", "run", "--rank", "notanint"],
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    assert_one_line_error(run_cli(*argv), USAGE, "error")


def test_no_command_prints_help_and_exits_2() -> None:
    proc = run_cli()
    assert proc.returncode == USAGE and "usage:" in proc.stderr and proc.stdout == ""


def test_two_traces_claiming_one_rank(tmp_path: Path) -> None:
    a = planted_rank(1, rank=1, world_size=2).write(tmp_path / "a.json")
    b = planted_rank(1, rank=1, world_size=2).write(tmp_path / "b.json")
    assert_one_line_error(
        run_cli("import", a, b, "--out", tmp_path / "run"), USAGE, "two traces claim rank 1"
    )


def test_top_level_help_explains_itself() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0 and proc.stderr == ""
    out = proc.stdout
    assert "idle" in out and "exit codes" in out
    for name in COMMANDS:
        assert name in out
    assert run_cli("--version").returncode == 0


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_subcommand_help_explains_itself(command: str) -> None:
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("usage: gpuwatch " + command)
    # a description sentence and the exit codes, not just the argument list
    description = out.split("\n\n")[1]
    assert len(description.split()) >= 8, out
    assert "exit codes" in out or "exit code" in out


def _schema() -> int:
    from gpuwatch.records import SCHEMA_VERSION

    return SCHEMA_VERSION


def test_a_run_kept_next_to_the_traces_is_not_read_as_a_trace(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    planted_rank(1).write(traces / "rank0.json.gz")
    assert run_cli("import", traces, "--out", traces / "run1").returncode == 0
    again = run_cli("import", traces, "--out", tmp_path / "run2")
    assert again.returncode == 0, again.stderr
    assert "1 rank(s)" in again.stderr


def test_directory_with_other_json_files(tmp_path: Path) -> None:
    """A TensorBoard-style folder: traces plus other JSON. Non-traces are skipped and named; a corrupt
    trace in the folder still fails (it is probably a rank's trace); no trace at all is a usage error."""
    folder = tmp_path / "plugins" / "profile" / "run1"
    folder.mkdir(parents=True)
    planted_rank(1).write(folder / "host.pt.trace.json.gz")
    (folder / "config.json").write_text('{"lr": 0.1, "batch": [1, 2]}')
    ok = run_cli("import", tmp_path / "plugins", "--out", tmp_path / "run")
    assert ok.returncode == 0, ok.stderr
    assert "skipped" in ok.stderr and "config.json" in ok.stderr and "1 rank(s)" in ok.stderr

    only_other = tmp_path / "other"
    only_other.mkdir()
    (only_other / "metrics.json").write_text("[1, 2, 3]")
    proc = run_cli("import", only_other, "--out", tmp_path / "run2")
    assert proc.returncode == USAGE and "no PyTorch profiler traces" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr

    (folder / "broken.pt.trace.json.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert run_cli("import", folder, "--out", tmp_path / "run3").returncode == RUNTIME


def _arguments(parser) -> list[tuple]:  # type: ignore[no-untyped-def]
    return [
        (a.dest, tuple(a.option_strings), a.nargs, a.default, a.required, a.help)
        for a in parser._actions  # noqa: SLF001 (argparse keeps no public list)
    ]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_command_parses_as_with_the_whole_parser(command: str) -> None:
    """`main` builds only the named command's arguments: they must be those of the whole parser."""
    import argparse

    from gpuwatch.cli.main import build_parser

    def sub(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
        return group.choices[command]

    whole, alone = sub(build_parser()), sub(build_parser(only=command))
    assert _arguments(alone) == _arguments(whole)
    assert alone.format_help() == whole.format_help()


def test_summary_does_not_build_the_other_commands_arguments(tmp_path: Path, good_trace: Path) -> None:
    """`gpuwatch summary` imports no other command's module, and its fast exit (`os._exit` after a flush)
    still delivers all of its output."""
    import subprocess
    import sys

    from conftest import ROOT, run_program

    assert run_cli("import", good_trace, "--out", tmp_path / "run").returncode == 0
    preamble = (
        "import atexit, sys\n"
        "sys.argv = ['gpuwatch', 'summary', sys.argv[1], '--json', '--no-cache']\n"
        "atexit.register(lambda: print(sorted(m for m in sys.modules if m.startswith('gpuwatch.cli.')),"
        " file=sys.stderr))\n"
    )

    def summary(entry: str) -> subprocess.CompletedProcess[str]:
        return run_program([sys.executable, "-c", preamble + entry, tmp_path / "run"], cwd=ROOT)

    fast = summary("from gpuwatch.cli import console_main; console_main()")
    assert fast.returncode == 0, fast.stderr
    assert json.loads(fast.stdout)["ranks"][0]["steps"] == 2  # all of it arrived, as one document
    assert fast.stderr == ""  # the fast exit runs no atexit handler: nothing printed the modules
    plain = summary("from gpuwatch.cli import main; sys.exit(main(sys.argv[1:]))")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == fast.stdout
    modules = ["gpuwatch.cli.arguments", "gpuwatch.cli.main", "gpuwatch.cli.summary_cmd"]
    assert plain.stderr.strip() == str(modules)
