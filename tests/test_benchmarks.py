"""Smoke-runs the benchmark harness on zmqdask alone, at tiny sizes: every case reports a figure."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "benchmarks" / "bench.py"
NUMBER = re.compile(r"^[\d,]+(\.\d+)?$")


@pytest.mark.timeout(180)
def test_every_benchmark_case_reports_a_number(tmp_path: Path) -> None:
    markdown = tmp_path / "bench.md"
    command = [
        sys.executable,
        str(BENCH),
        "--quick",
        "--frameworks",
        "zmqdask",
        "--scaling-workers",
        "1",
        "--payload-sizes",
        "100",
        "--scatter-mb",
        "2",
        "--markdown",
        str(markdown),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr
    rows = [line for line in markdown.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    cells = {row.split(" | ")[0].lstrip("| "): row.rstrip(" |").split(" | ")[1] for row in rows}
    expected = ("round trip p50", "map + gather", "scatter (GB/s)", "gather (GB/s)", "array as argument", "groupby")
    for label in expected:
        matching = [value for name, value in cells.items() if name.startswith(label)]
        assert matching, f"no row for {label!r} in {sorted(cells)}"
        assert all(NUMBER.match(value) for value in matching), (label, matching)
    assert "Errors" not in markdown.read_text()
    assert re.search(r"over a Unix socket \(as Client\(\)'s own cluster\) p50 \d+\.\d+ ms", done.stdout)
    assert re.search(r"Floor of a scatter here, .* median \d+\.\d+ GB/s \(slowest \d+\.\d+", done.stdout)


@pytest.mark.timeout(120)
def test_the_memory_benchmark_reports_bytes_per_task_and_checks_every_result() -> None:
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "memory.py"), "--tasks", "5000"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^client: \+[\d,]+ B per task", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^broker: \+[\d,]+ B per task", done.stdout, re.MULTILINE), done.stdout
    assert "all correct" in done.stdout
    assert "WARNING" not in done.stderr, done.stderr


@pytest.mark.timeout(150)
def test_the_cost_benchmark_reports_cpu_per_task_for_every_process() -> None:
    command = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "cost.py"),
        "--roundtrips",
        "200",
        "--map-tasks",
        "2000",
        "--repeats",
        "2",
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=140)
    assert done.returncode == 0, done.stderr
    cpu_lines = [line for line in done.stdout.splitlines() if line.strip().startswith("CPU per")]
    # The floor and zmqdask round trips, each placed by the OS and on one CPU, then two maps.
    assert len(cpu_lines) == 6, done.stdout
    for line in cpu_lines[:4]:
        assert re.search(r"client [\d.]+, broker [\d.]+, .*sum [\d.]+ us", line), line
    for line in cpu_lines[4:]:
        bound = r"worker 0 [\d.]+, worker 1 [\d.]+; sum [\d.]+ us; (\d+ CPUs bound it at [\d,]+ tasks/s|too short)"
        assert re.search(bound, line), line
    assert re.search(r"^zmqdask map \+ gather of 2,000, repeat 2 .*: [\d,]+ tasks/s$", done.stdout, re.MULTILINE)
    assert "WARNING" not in done.stderr, done.stderr


@pytest.mark.timeout(120)
def test_the_critical_path_benchmark_follows_a_round_trip_through_every_process() -> None:
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "critical_path.py"), "--roundtrips", "200"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr
    steps = [line.split() for line in done.stdout.splitlines() if " -> " in line]
    # The path starts and ends in the client, and passes the broker twice and the worker.
    assert steps[0][:2] == ["client:", "submit"] and steps[-1][3:5] == ["client:", "result"], done.stdout
    processes = [step[0] for step in steps]
    assert processes.count("broker:") >= 4 and "worker:" in processes, done.stdout
    assert ["worker:", "task", "->", "worker:", "ran"] == next(s[:5] for s in steps if s[:2] == ["worker:", "task"])
    assert all(float(step[5]) > 0 for step in steps), done.stdout
    assert re.search(r"^by kind: .*hop [\d.]+ us", done.stdout, re.MULTILINE), done.stdout
