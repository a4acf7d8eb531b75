"""Runs the seed notebook, ported from Dask to zmqdask, in a real IPython kernel and checks every cell."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.notebook

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED_ENV_VAR = "ZMQDASK_SEED_NOTEBOOK"
DEFAULT_SEED = REPO_ROOT.parent / "shared" / "seed" / "async-await.ipynb"
KERNEL_NAME = "zmqdask-under-test"
CELL_TIMEOUT_S = 45.0
"""Per cell; a cell that runs longer is interrupted and reported as failed, and the rest run."""
TEST_TIMEOUT_S = 300.0

PORT = {
    "from dask.distributed import Client": "from zmqdask import Client",
    "import dask\n": "import zmqdask\n",
    "dask.datasets.timeseries()": "zmqdask.datasets.timeseries()",
}
"""The only edits made to the notebook: Dask imports and calls replaced by zmqdask's."""

CHECK_CELL = """\
import json
_pdf = await client.compute(df)
_sums = _pdf[['x', 'y']].sum()
print(json.dumps({"npartitions": df.npartitions, "x": float(_sums["x"]), "y": float(_sums["y"])}))
"""
"""Appended cell: the x/y sums computed by pandas from the persisted frame's gathered partitions."""

CLOSE_CELL = "await client.close()\n"
"""Appended cell: stop the local cluster before the kernel goes away."""

FUTURE_REPR = re.compile(r"^<Future: \w+, key: (\S+)>$")


def _seed_path() -> Path:
    configured = os.environ.get(SEED_ENV_VAR)
    return Path(configured) if configured else DEFAULT_SEED


def _port_notebook(nb: Any) -> None:
    """Apply :data:`PORT` to the code cells, each replacement exactly once."""
    done = dict.fromkeys(PORT, 0)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for old, new in PORT.items():
            source = cell.source if cell.source.endswith("\n") else cell.source + "\n"
            if old in source:
                done[old] += source.count(old)
                cell.source = source.replace(old, new).rstrip("\n")
    if any(count != 1 for count in done.values()):
        pytest.fail(f"the seed notebook changed: expected each Dask line once in code cells, found {done}")


def _install_kernel(root: Path) -> None:
    """A kernel spec that runs this interpreter, found through JUPYTER_PATH."""
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"zmqdask test ({sys.executable})",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def _text(cell: Any) -> str:
    """Everything a code cell showed as plain text (results and printed output)."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts).strip()


def _errors(cell: Any) -> list[str]:
    """Errors a code cell raised, and tracebacks it printed (from background callbacks)."""
    found = []
    for output in cell.get("outputs", []):
        if output.output_type == "error":
            found.append(f"{output.ename}: {output.evalue}")
        elif output.output_type == "stream" and output.name == "stderr" and "Traceback" in output.text:
            found.append(output.text)
    return found


def _series_values(text: str) -> dict[str, float]:
    """Parse a pandas Series repr such as ``x   -463.86\\ny   12.5\\ndtype: float64``."""
    values = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] != "dtype:":
            values[fields[0]] = float(fields[1])
    return values


def _code_cell(nb: Any, source_start: str) -> Any:
    matches = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(source_start)]
    if len(matches) != 1:
        pytest.fail(f"expected one code cell starting with {source_start!r}, found {len(matches)}")
    return matches[0]


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_seed_notebook_runs_on_zmqdask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell runs without error and shows what the Dask original showed."""
    seed = _seed_path()
    if not seed.is_file():
        pytest.skip(f"seed notebook not found at {seed} (set {SEED_ENV_VAR} to its path)")
    import nbclient
    import nbformat

    copy = tmp_path / "async-await.ipynb"
    shutil.copyfile(seed, copy)
    nb = nbformat.read(copy, as_version=4)
    _port_notebook(nb)
    for source in (CHECK_CELL, CLOSE_CELL):
        cell = nbformat.v4.new_code_cell(source)
        if nb.nbformat_minor < 5:  # cell ids exist from format 4.5 on; the seed is older
            del cell["id"]
        nb.cells.append(cell)

    kernels = tmp_path / "jupyter"
    _install_kernel(kernels)
    monkeypatch.setenv("JUPYTER_PATH", str(kernels))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        allow_errors=True,
        interrupt_on_timeout=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    nbformat.write(nb, tmp_path / "executed.ipynb")

    failures = {i: _errors(cell) for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and _errors(cell)}
    assert not failures, f"cells failed: {failures}"

    submitted = _text(_code_cell(nb, "def inc"))
    match = FUTURE_REPR.match(submitted)
    assert match and match.group(1).startswith("inc-"), submitted
    awaited = [c for c in nb.cells if c.cell_type == "code" and c.source.strip() == "await future"]
    assert len(awaited) == 2, "the seed notebook awaits two futures"
    assert _text(awaited[0]) == str(10 + 1)

    structure = _text(_code_cell(nb, "import zmqdask"))
    assert "npartitions=30" in structure, structure

    computed = _text(_code_cell(nb, "future = client.compute(total)"))
    assert FUTURE_REPR.match(computed), computed

    sums = _series_values(_text(awaited[1]))
    expected = json.loads(_text(nb.cells[-2]).splitlines()[-1])
    assert expected["npartitions"] == 30
    assert set(sums) == {"x", "y"}, sums
    for column in ("x", "y"):
        # The notebook shows pandas' default 6 decimals; the tree reduction may differ from
        # pandas' single sum in the last bits only.
        assert math.isclose(sums[column], expected[column], rel_tol=1e-9, abs_tol=1e-6), (column, sums, expected)
