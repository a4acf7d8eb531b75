"""Smoke-runs every example script as a subprocess with a timeout and checks what it prints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
SEED_NOTEBOOK = Path(
    os.environ.get("ZMQDASK_SEED_NOTEBOOK", REPO_ROOT.parent / "shared" / "seed" / "async-await.ipynb")
)
EXAMPLE_TIMEOUT_S = 120.0
FUTURE_REPR = re.compile(r"^<Future: \w+, key: inc-\S+>$", re.MULTILINE)


def run_example(*command: str) -> str:
    """Run one example from the repository root; return its stdout, failing on a non-zero exit."""
    env = dict(os.environ)
    # The console scripts (zmqdask-broker, zmqdask-worker) live next to this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    try:
        done = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command} did not finish within {EXAMPLE_TIMEOUT_S} s; stderr: {exc.stderr!r}")
    assert done.returncode == 0, f"{command} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def python_example(name: str) -> str:
    """Run ``examples/<name>`` with this interpreter."""
    return run_example(sys.executable, str(EXAMPLES / name))


def printed(stdout: str, label: str) -> str:
    """The text after ``label: `` on the line that starts with it."""
    for line in stdout.splitlines():
        if line.startswith(label + ": "):
            return line[len(label) + 2 :]
    raise AssertionError(f"no line starting with {label!r} in:\n{stdout}")


def test_every_example_is_covered() -> None:
    """A new example needs a test here."""
    tested = {
        "async_script.py",
        "sync_basics.py",
        "dataframe_walkthrough.py",
        "async_notebook_flow.py",
        "multi_host.sh",
    }
    present = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")}
    assert present == tested


def test_async_script_is_the_notebook_example() -> None:
    """The script is the notebook's "Within a script" example with only the import changed."""
    if not SEED_NOTEBOOK.is_file():
        pytest.skip(f"seed notebook not found at {SEED_NOTEBOOK}")
    cells = json.loads(SEED_NOTEBOOK.read_text())["cells"]
    markdown = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    blocks = re.findall(r"```python\n(.*?)```", markdown, re.DOTALL)
    assert len(blocks) == 1
    ported = blocks[0].replace("from dask.distributed import Client", "from zmqdask import Client")
    assert (EXAMPLES / "async_script.py").read_text() == ported


def test_async_script_prints_11() -> None:
    """The notebook's script: submit inc(10) on a local cluster and print the result."""
    assert python_example("async_script.py").split() == [str(10 + 1)]


def test_sync_basics() -> None:
    """Each basic feature prints the value it should."""
    out = python_example("sync_basics.py")
    assert printed(out, "submit") == str(4 * 4)
    assert printed(out, "dependent") == str(4 * 4 + 10)
    assert printed(out, "map + gather") == str([x * x for x in range(10)])
    assert printed(out, "as_completed sum") == str(sum(x * x for x in range(10)))
    assert printed(out, "scatter + sum") == str(sum(range(1_000_000)))
    assert printed(out, "error") == "cannot handle 3"


def test_async_notebook_flow() -> None:
    """The notebook's steps in order: a future, 11, the frame structure, a future, the x/y sums."""
    out = python_example("async_notebook_flow.py")
    assert len(FUTURE_REPR.findall(out)) == 1, out
    lines = out.splitlines()
    assert lines[1] == str(10 + 1)
    assert "npartitions=30" in out
    assert re.search(r"^<Future: \w+, key: \S+>$", out, re.MULTILINE)
    assert re.search(r"^x\s+-?\d+\.\d+\ny\s+-?\d+\.\d+\ndtype: float64$", out, re.MULTILINE), out


def test_dataframe_walkthrough() -> None:
    """The synchronous DataFrame tour runs to its end and checks its own results against pandas."""
    out = python_example("dataframe_walkthrough.py")
    assert "npartitions=30" in out
    assert printed(out, "checked against pandas") == "ok"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_multi_host_script() -> None:
    """Broker, worker pool and client as separate processes, as on separate hosts."""
    out = run_example("bash", str(EXAMPLES / "multi_host.sh"))
    assert printed(out, "result") == str(sum(x + 1 for x in range(100)))
