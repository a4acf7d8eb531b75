"""Benchmark zmqdask against dask.distributed and ProcessPoolExecutor on the same work, in one run.

Usage::

    python benchmarks/bench.py --quick                     # well under a minute
    python benchmarks/bench.py                             # a few minutes
    python benchmarks/bench.py --markdown docs/benchmarks.md

Every framework gets 2 local worker processes with 1 thread each (the scaling table varies
the count).  Each (framework, worker count) session runs in a child process (``cases.py``)
with a per-case timeout; a case that fails or hangs shows ``error: ...`` in its cell and the
run goes on.  Figures are medians of repeats; ratios are peer time / zmqdask time, so a
ratio above 1 means zmqdask is faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import queue
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import floor as floor_module
import zmq
from cases import FRAMEWORKS, MARKER, Spec

HERE = Path(__file__).resolve().parent
CASES_SCRIPT = HERE / "cases.py"

GRACE_S = 20.0
"""Extra time the parent allows beyond the per-case timeout before it kills a session."""

ERROR_CELL_CHARS = 40
"""Longest error text shown in a table cell; the full text is listed under the tables."""

TRANSPORT_TITLES = {"tcp": "over TCP on loopback", "ipc": "over a Unix socket (as Client()'s own cluster)"}

FRAMEWORK_TITLES = {"zmqdask": "zmqdask", "dask": "dask.distributed", "pool": "ProcessPool"}

MAIN_CASES = (
    "roundtrip",
    "submit",
    "map",
    "chain",
    "scatter",
    "gather",
    "there_and_back",
    "ts_sum",
    "ts_persist",
    "ts_groupby",
    "ts_filter",
)

PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "repeats": 5,
        "roundtrips": 500,
        "submit_tasks": 2000,
        "map_tasks": 2000,
        "chain_length": 300,
        "scatter_mb": 200.0,
        "timeseries_freq": "1s",
        "payload_sizes": "100,102400,10485760",
        "payload_total_mb": 200.0,
        "payload_max_tasks": 1000,
        "spin_tasks": 400,
        "spin_ms": 2.0,
        "scaling_workers": "1,2,4",
        "startup_repeats": 3,
        "timeout": 120.0,
    },
    "quick": {
        "repeats": 3,
        "roundtrips": 100,
        "submit_tasks": 200,
        "map_tasks": 200,
        "chain_length": 50,
        "scatter_mb": 20.0,
        "timeseries_freq": "60s",
        "payload_sizes": "100,102400,10485760",
        "payload_total_mb": 30.0,
        "payload_max_tasks": 100,
        "spin_tasks": 100,
        "spin_ms": 2.0,
        "scaling_workers": "1,2,4",
        "startup_repeats": 1,
        "timeout": 30.0,
    },
}
"""Work sizes of ``--quick`` and of the default run; every one can be overridden on the command line."""


@dataclass
class Outcome:
    """What one case of one session produced: samples, or why not."""

    seconds: list[float] = dataclasses.field(default_factory=list)
    latencies: list[float] = dataclasses.field(default_factory=list)
    count: int = 0
    error: str = ""
    na: str = ""


Results = dict[tuple[str, int, str], Outcome]
"""(framework, workers, case) -> outcome."""


# ---------------------------------------------------------------------------------------------
# Running sessions


def _child_env() -> dict[str, str]:
    # Worker processes of every framework must import ``workloads`` by name, whatever way
    # they are started (fork, spawn, or a fresh interpreter), so the path goes in the env.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    return env


def _kill_group(proc: subprocess.Popen[str]) -> None:
    # The child leads its own process group (start_new_session), which holds the worker
    # processes it started; killing the group leaves nothing running behind.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _tail(errfile: IO[bytes]) -> str:
    errfile.seek(0)
    text = errfile.read().decode(errors="replace").strip().splitlines()
    interesting = [line for line in text if "Error" in line or "error" in line] or text
    return interesting[-1].strip() if interesting else ""


def _run_child(
    framework: str, workers: int, cases: list[str], spec: Spec, timeout_s: float
) -> tuple[dict[str, Any], str]:
    """Run one child; return the events it reported and, if it stopped early, why."""
    command = [
        sys.executable,
        str(CASES_SCRIPT),
        "--framework", framework,
        "--workers", str(workers),
        "--cases", ",".join(cases),
        "--spec", json.dumps(dataclasses.asdict(spec)),
        "--timeout", str(timeout_s),
    ]  # fmt: skip
    events: dict[str, Any] = {}
    failure = ""
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errfile, text=True, env=_child_env(), start_new_session=True
        )
        if proc.stdout is None:  # cannot happen with stdout=PIPE; keeps the type checker informed
            raise RuntimeError("child has no stdout")
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        try:
            while True:
                try:
                    line = lines.get(timeout=timeout_s + GRACE_S)
                except queue.Empty:
                    failure = f"no answer within {timeout_s + GRACE_S:.0f} s (killed)"
                    break
                if line is None:
                    failure = f"exited with status {proc.wait()}"
                    break
                if not line.startswith(MARKER):
                    continue
                event = json.loads(line[len(MARKER) :])
                if event["case"] == "end":
                    break
                events[event["case"]] = event
            if not failure:
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    failure = "did not exit after its last case (killed)"
        finally:
            _kill_group(proc)
        if failure:
            detail = _tail(errfile)
            failure = f"{failure}: {detail}" if detail else failure
    return events, failure


def _outcome(event: dict[str, Any]) -> Outcome:
    return Outcome(
        seconds=event.get("seconds", []),
        latencies=event.get("latencies", []),
        count=event.get("count", 0),
        error=event.get("error", ""),
        na=event.get("na", ""),
    )


def run_session(framework: str, workers: int, cases: list[str], spec: Spec, timeout_s: float) -> dict[str, Outcome]:
    """Run ``cases`` on a fresh ``workers``-process cluster of ``framework``.

    When the child dies or hangs, the case it was running is marked failed and a new child
    runs the remaining cases, so one bad case costs only its own cell.
    """
    outcomes: dict[str, Outcome] = {}
    todo = list(cases)
    while True:
        events, failure = _run_child(framework, workers, todo, spec, timeout_s)
        startup = events.get("startup")
        if startup is None or startup.get("error"):
            why = startup["error"] if startup else failure
            for case in ["startup", *todo]:
                outcomes.setdefault(case, Outcome(error=f"cluster did not start: {why}"))
            return outcomes
        outcomes.setdefault("startup", _outcome(startup))
        for case in todo:
            if case in events:
                outcomes[case] = _outcome(events[case])
        missing = [case for case in todo if case not in events]
        if not missing:
            return outcomes
        outcomes[missing[0]] = Outcome(error=failure or "no result")
        todo = missing[1:]
        if not todo:
            return outcomes


def run_all(frameworks: list[str], spec: Spec, args: argparse.Namespace) -> Results:
    """Run every session of the benchmark; print progress to stderr."""
    payload_cases = [f"payload:{size}" for size in args.payload_sizes]
    plan: list[tuple[str, int, list[str]]] = []
    for framework in frameworks:
        plan.append((framework, 2, [*MAIN_CASES, *payload_cases, "spin"]))
    for _ in range(args.startup_repeats - 1):
        plan.extend((framework, 2, []) for framework in frameworks)
    for workers in args.scaling_workers:
        if workers != 2:
            plan.extend((framework, workers, ["spin"]) for framework in frameworks)
    results: Results = {}
    for framework, workers, cases in plan:
        started = time.monotonic()
        outcomes = run_session(framework, workers, cases, spec, args.timeout)
        took = time.monotonic() - started
        print(f"  {framework}, {workers} workers, {len(cases)} cases: {took:.1f} s", file=sys.stderr, flush=True)
        for case, outcome in outcomes.items():
            key = (framework, workers, case)
            if case == "startup" and key in results and not outcome.error:
                results[key].seconds.extend(outcome.seconds)
            else:
                results.setdefault(key, outcome)
    return results


# ---------------------------------------------------------------------------------------------
# Reporting


@dataclass(frozen=True)
class Row:
    """One table row: which samples to read and how to show them."""

    label: str
    case: str
    workers: int = 2
    show: str = "seconds"  # seconds | ms_p50 | ms_p99 | rate | gbps


def _value(outcome: Outcome, show: str) -> tuple[float, float] | None:
    """(time for the ratio, value to display), or None without samples."""
    if show in ("ms_p50", "ms_p99"):
        if not outcome.latencies:
            return None
        ordered = sorted(outcome.latencies)
        q = 0.5 if show == "ms_p50" else 0.99
        t = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
        return t, t * 1e3
    if not outcome.seconds:
        return None
    t = statistics.median(outcome.seconds)
    if show == "rate":
        return t, outcome.count / t
    if show == "gbps":
        return t, outcome.count / t / 1e9
    return t, t


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _cell(outcome: Outcome | None, show: str) -> str:
    if outcome is None:
        return "-"
    if outcome.error:
        text = outcome.error
        return "error: " + (text if len(text) <= ERROR_CELL_CHARS else text[: ERROR_CELL_CHARS - 3] + "...")
    if outcome.na:
        return "n/a"
    value = _value(outcome, show)
    return "-" if value is None else _fmt(value[1])


def _ratio(peer: Outcome | None, ours: Outcome | None, show: str) -> str:
    if peer is None or ours is None or peer.error or ours.error:
        return ""
    a, b = _value(peer, show), _value(ours, show)
    if a is None or b is None or b[0] <= 0:
        return ""
    return f"{a[0] / b[0]:.2f}"


def build_table(rows: list[Row], frameworks: list[str], results: Results) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of one table (values, then peer ÷ zmqdask time ratios)."""
    peers = [f for f in frameworks if f != "zmqdask"] if "zmqdask" in frameworks else []
    header = ["case", *(FRAMEWORK_TITLES[f] for f in frameworks), *(f"{FRAMEWORK_TITLES[p]} / zmqdask" for p in peers)]
    body = []
    for row in rows:
        got = {f: results.get((f, row.workers, row.case)) for f in frameworks}
        cells = [row.label, *(_cell(got[f], row.show) for f in frameworks)]
        cells += [_ratio(got[p], got["zmqdask"], row.show) for p in peers]
        body.append(cells)
    return header, body


def render_text(header: list[str], body: list[list[str]]) -> str:
    """A fixed-width text table."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(header: list[str], body: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in body]
    return "\n".join(lines)


def tables(
    args: argparse.Namespace, frameworks: list[str], spec: Spec, results: Results
) -> list[tuple[str, list[Row]]]:
    """The three tables: main cases, tasks/s by worker count, tasks/s by payload size."""
    main = [
        Row(f"round trip p50 (ms), {spec.roundtrips}x{spec.repeats} sequential", "roundtrip", show="ms_p50"),
        Row("round trip p99 (ms)", "roundtrip", show="ms_p99"),
        Row(f"submit loop + gather (tasks/s), {spec.submit_tasks} tasks", "submit", show="rate"),
        Row(f"map + gather (tasks/s), {spec.map_tasks} tasks", "map", show="rate"),
        Row(f"chain of dependent tasks (tasks/s), {spec.chain_length} long", "chain", show="rate"),
        Row("Client() to first result (s), cluster start included", "startup"),
        Row(f"scatter (GB/s), {spec.scatter_bytes / 1e6:.0f} MB array", "scatter", show="gbps"),
        Row(f"gather (GB/s), {spec.scatter_bytes / 1e6:.0f} MB array held by a worker", "gather", show="gbps"),
        Row("array as argument and result (GB/s, both ways)", "there_and_back", show="gbps"),
        Row(f"timeseries(freq={spec.timeseries_freq!r})[['x','y']].sum(), fresh (s)", "ts_sum"),
        Row("persist() of timeseries (s)", "ts_persist"),
        Row("groupby('name').x.mean() on persisted (s)", "ts_groupby"),
        Row("df[df.x > 0].y.sum() on persisted (s)", "ts_filter"),
    ]
    by_workers = [
        Row(f"{w} worker{'s' if w > 1 else ''}", "spin", workers=w, show="rate") for w in args.scaling_workers
    ]
    by_payload = [Row(_size_label(size), f"payload:{size}", show="rate") for size in args.payload_sizes]
    return [
        ("Main cases (2 workers x 1 thread)", main),
        (
            f"Scaling: tasks/s of {spec.spin_tasks} tasks busy for {spec.spin_s * 1e3:g} ms each, by worker count",
            by_workers,
        ),
        ("Scaling: tasks/s of map + gather by payload size (one distinct array per task)", by_payload),
    ]


def _size_label(size: int) -> str:
    for unit, scale in (("MB", 1024**2), ("KB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit} per task"
    return f"{size} B per task"


def machine() -> list[str]:
    """Lines describing this machine, the interpreter and the package versions."""
    versions = []
    for name in ("zmqdask", "dask", "distributed", "pandas", "numpy", "pyzmq", "msgpack", "cloudpickle"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    if commit:
        versions[0] += f" (commit {commit})"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs ({usable} usable), {platform.machine()}",
        f"python: {platform.python_implementation()} {platform.python_version()}",
        "packages: " + ", ".join(versions),
    ]


def _error_lines(results: Results) -> list[str]:
    """One line per distinct error of a session, naming the cases it hit."""
    grouped: dict[tuple[str, int, str], list[str]] = {}
    for (framework, workers, case), outcome in results.items():
        if outcome.error:
            grouped.setdefault((framework, workers, outcome.error), []).append(case)
    return [
        f"{framework}, {workers} workers ({', '.join(cases)}): {error}"
        for (framework, workers, error), cases in sorted(grouped.items())
    ]


def report(
    args: argparse.Namespace,
    frameworks: list[str],
    spec: Spec,
    results: Results,
    command: str,
    floors: dict[str, tuple[float, float]] | None = None,
    transfer_floor: floor_module.TransferResult | None = None,
) -> tuple[str, str]:
    """The plain-text report and the markdown document."""
    intro = [
        f"Medians of {spec.repeats} repeats (Client() to first result: of {args.startup_repeats} cluster starts).",
        "Ratios are peer time / zmqdask time: above 1 means zmqdask is faster.",
    ]
    if floors:
        measured = "; ".join(
            f"{TRANSPORT_TITLES[name]} p50 {p50:.3f} ms, p99 {p99:.3f} ms" for name, (p50, p99) in floors.items()
        )
        intro.append(
            "Floor of a round trip here, same run: bare pyzmq from this process through a Python ROUTER"
            f" process to a Python worker process and back (the same four hops, no framework): {measured}."
        )
    if transfer_floor is not None:
        intro.append(
            f"Floor of a scatter here, same run: the {spec.scatter_bytes / 1e6:.0f} MB array as one bare pyzmq"
            " message from this process to another over a Unix socket, new contents each repeat, after one"
            " untimed:"
            f" median {transfer_floor.median_gbps:.2f} GB/s (slowest {transfer_floor.min_gbps:.2f},"
            f" fastest {transfer_floor.max_gbps:.2f})."
        )
    text = [f"command: {command}", *machine(), *intro]
    md = ["# Benchmarks", "", f"Command: `{command}`", "", *(f"- {line}" for line in machine()), "", *intro]
    for title, rows in tables(args, frameworks, spec, results):
        header, body = build_table(rows, frameworks, results)
        text += ["", title, render_text(header, body)]
        md += ["", f"## {title}", "", render_markdown(header, body)]
    errors = _error_lines(results)
    if errors:
        text += ["", "Errors:", *(f"  {e}" for e in errors)]
        md += ["", "## Errors", "", *(f"- {e}" for e in errors)]
    md += [
        "",
        "## Notes",
        "",
        "- Every framework runs local worker processes with one thread each, started by its own",
        "  client (`zmqdask.Client(...)`, `distributed.Client(...)`, `ProcessPoolExecutor(max_workers=...)`).",
        "- Tiny tasks are `x + 1` submitted with `pure=False`; dask.distributed runs with its default configuration.",
        "- zmqdask's `map` runs many quick calls with plain arguments in batch tasks, as it does by default"
        " (`zmqdask.batches`; each call keeps its own future); the submit loop and the chain are one task"
        " per call, and the payload rows pass arrays, which are not batched.",
        "- Every timeseries frame gets a new seed and every query on the persisted frame a new `split_every`",
        "  (at least npartitions: one combine step), so no framework hands back a result of an earlier repeat.",
        "- The persist row calls `client.persist` and then the framework's own `wait` on the persisted frame.",
        "- Scatter returns once a worker holds the array; each repeat scatters new contents, after two"
        " untimed full-size scatters (one per worker: a process's first large receive lands in fresh"
        " pages); the floor line's transfer also skips its first. Gather"
        " fetches a task's result that only the worker holds (a scattered value's gather would be"
        " served from the client's own copy). ProcessPool has neither: n/a.",
        "- ProcessPool has no collections either, so its timeseries rows are n/a.",
        "- The machine is shared and noisy; read small differences as noise.",
    ]
    return "\n".join(text), "\n".join(md) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line, filling unset sizes from the chosen preset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: finishes in well under a minute")
    parser.add_argument(
        "--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset of zmqdask,dask,pool"
    )
    parser.add_argument("--markdown", metavar="PATH", help="also write the report as a markdown document")
    parser.add_argument("--repeats", type=int, help="timed repeats per case (median reported)")
    parser.add_argument("--roundtrips", type=int, help="sequential round trips per repeat")
    parser.add_argument("--submit-tasks", type=int, help="tasks in the submit loop")
    parser.add_argument("--map-tasks", type=int, help="tasks in one map call")
    parser.add_argument("--chain-length", type=int, help="dependent tasks in the chain")
    parser.add_argument("--scatter-mb", type=float, help="size of the scattered array (MB)")
    parser.add_argument("--timeseries-freq", help="row frequency of timeseries() (30 daily partitions)")
    parser.add_argument("--payload-sizes", help="comma-separated payload sizes in bytes")
    parser.add_argument("--payload-total-mb", type=float, help="payload bytes per repeat (sets the task count)")
    parser.add_argument("--payload-max-tasks", type=int, help="most tasks per payload size")
    parser.add_argument("--spin-tasks", type=int, help="tasks in the worker-scaling case")
    parser.add_argument("--spin-ms", type=float, help="busy time of each worker-scaling task (ms)")
    parser.add_argument("--scaling-workers", help="comma-separated worker counts of the scaling table")
    parser.add_argument("--startup-repeats", type=int, help="cluster starts measured per framework")
    parser.add_argument("--timeout", type=float, help="seconds allowed per case before it is reported as an error")
    args = parser.parse_args(argv)
    for name, value in PRESETS["quick" if args.quick else "default"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.payload_sizes = _ints(args.payload_sizes)
    args.scaling_workers = _ints(args.scaling_workers)
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = set(args.frameworks) - set(FRAMEWORKS)
    if unknown:
        parser.error(f"unknown frameworks: {', '.join(sorted(unknown))}")
    if args.repeats < 1 or args.startup_repeats < 1 or args.timeout <= 0:
        parser.error("--repeats and --startup-repeats must be at least 1, --timeout positive")
    return args


def compile_bytecode() -> None:
    """Write the bytecode of zmqdask's packages, as an installed package has it.

    pip compiles a package into its site-packages at install time, and Python caches the
    bytecode of an editable install at its first import.  With PYTHONDONTWRITEBYTECODE set
    (some containers set it), an editable checkout would be compiled again by every process
    the local cluster starts, which the installed peers never are: Client() to its first
    result would time compiling.  Python reads cached bytecode whatever that variable says.
    """
    root = Path(__file__).resolve().parent.parent
    packages = [str(root / name) for name in ("zmqdask", "broker") if (root / name).is_dir()]
    if packages:
        subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=False, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report; exit status 0 even when cells show errors."""
    args = parse_args(argv)
    spec = Spec(
        repeats=args.repeats,
        roundtrips=args.roundtrips,
        submit_tasks=args.submit_tasks,
        map_tasks=args.map_tasks,
        chain_length=args.chain_length,
        scatter_bytes=int(args.scatter_mb * 1e6),
        timeseries_freq=args.timeseries_freq,
        payload_total_bytes=int(args.payload_total_mb * 1e6),
        payload_max_tasks=args.payload_max_tasks,
        spin_tasks=args.spin_tasks,
        spin_s=args.spin_ms / 1e3,
    )
    command = "python benchmarks/bench.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    compile_bytecode()
    print("running sessions:", file=sys.stderr, flush=True)
    results = run_all(args.frameworks, spec, args)
    floors: dict[str, tuple[float, float]] = {}
    transfer_floor = None
    if "zmqdask" in args.frameworks:
        for transport in TRANSPORT_TITLES:
            try:
                floors[transport] = floor_module.bare_round_trip(spec.roundtrips * spec.repeats, transport)
            except (OSError, TimeoutError, RuntimeError, zmq.ZMQError) as exc:
                print(f"the bare round-trip floor over {transport} could not be measured: {exc}", file=sys.stderr)
        try:
            transfer_floor = floor_module.bare_transfer(spec.scatter_bytes, spec.repeats)
        except (OSError, TimeoutError, RuntimeError, zmq.ZMQError) as exc:
            print(f"the bare transfer floor could not be measured: {exc}", file=sys.stderr)
    text, md = report(args, args.frameworks, spec, results, command.strip(), floors, transfer_floor)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
