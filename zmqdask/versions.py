"""Versions of Python and of the packages that must agree across a cluster (``get_versions``).

A client pickles functions and values that workers unpickle, and the broker relays messages
between them: Python and the packages on that path must match.  The broker reports its own
versions in INFO; workers report theirs through ``Client.run``.
"""

from __future__ import annotations

import importlib.metadata
import platform
import struct
import sys
from collections.abc import Iterable, Mapping
from typing import Any

REQUIRED_PACKAGES = ("zmqdask", "pyzmq", "msgpack", "cloudpickle")
"""Packages every process of a cluster runs: a difference is a mismatch."""

OPTIONAL_PACKAGES = ("numpy", "pandas", "pyarrow")
"""Packages whose values travel in tasks: a difference among those that have them is one."""


def version_of(package: str) -> str | None:
    """The installed version of ``package``, or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_info(packages: Iterable[str] = ()) -> dict[str, Any]:
    """This process's host and package versions, shaped like Dask's ``get_versions`` entries."""
    names = dict.fromkeys((*REQUIRED_PACKAGES, *OPTIONAL_PACKAGES, *packages))
    return {
        "host": {
            "python": ".".join(map(str, sys.version_info[:3])),
            "python-bits": struct.calcsize("P") * 8,
            "OS": platform.system(),
            "OS-release": platform.release(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "byteorder": sys.byteorder,
        },
        "packages": {"python": ".".join(map(str, sys.version_info[:3])), **{n: version_of(n) for n in names}},
    }


def mismatches(client: Mapping[str, Any], scheduler: Mapping[str, Any], workers: Mapping[str, Any]) -> list[str]:
    """One line per package whose versions differ between the client, the broker and the
    workers (a package some process lacks counts only if it is required)."""
    processes = {"client": client, "broker": scheduler, **workers}
    names = dict.fromkeys(["python", *REQUIRED_PACKAGES])
    for info in processes.values():
        names.update(dict.fromkeys(info.get("packages", {})))
    lines = []
    for name in names:
        found = {who: info.get("packages", {}).get(name) for who, info in processes.items() if info}
        present = {v for v in found.values() if v is not None}
        missing = [who for who, v in found.items() if v is None]
        required = name == "python" or name in REQUIRED_PACKAGES
        if len(present) > 1 or (required and missing and present):
            detail = ", ".join(f"{who}: {version or 'missing'}" for who, version in found.items())
            lines.append(f"{name}: {detail}")
    return lines
