"""Command line entry point that writes CURVE key pairs: ``zmqdask-keys`` and ``python -m zmqdask.keys``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from zmqdask.errors import UsageError
from zmqdask.security import CLIENTS_DIR, SECRET_SUFFIX, create_keys

EXIT_OK = 0
"""The key directory holds every requested pair."""
EXIT_FAILED = 1
"""A file could not be written."""
EXIT_USAGE = 2
"""Invalid command line (argparse's convention), or keys cannot be used here."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``zmqdask-keys``."""
    parser = argparse.ArgumentParser(
        prog="zmqdask-keys",
        description=(
            "Write CURVE key pairs for a zmqdask broker and its peers into DIR: broker.key and "
            "broker.key_secret, clients/client-N.key(_secret) and workers/worker-N.key(_secret). "
            "Existing pairs are kept, so running it again with larger counts adds keys. "
            "Start the broker with `zmqdask-broker --curve-keys DIR`."
        ),
        epilog=(
            "Files ending in .key are public; .key_secret files hold a secret key and must only be "
            "copied to the host that uses them. The broker reads broker.key_secret, clients/*.key "
            "and workers/*.key; a client or worker host needs broker.key and its own .key_secret."
        ),
    )
    parser.add_argument("directory", metavar="DIR", help="the key directory (created if missing)")
    parser.add_argument("--clients", type=int, default=1, metavar="N", help="client key pairs (default: 1)")
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="worker key pairs, one per worker host (default: 1)"
    )
    return parser


def describe(root: Path, paths: Iterable[Path]) -> list[str]:
    """One line per file written under ``root``: its path, whether it is secret, and who needs it."""
    lines = []
    for path in paths:
        secret = path.name.endswith(SECRET_SUFFIX)
        if path.parent == root:
            who = "the broker host only" if secret else "every client and worker host"
        elif path.parent.name == CLIENTS_DIR:
            who = "that client only" if secret else "the broker's allow-list of clients"
        else:
            who = "that worker host only" if secret else "the broker's allow-list of workers"
        lines.append(f"{path}  ({'secret' if secret else 'public'}: {who})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Write the requested key pairs; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.clients < 0 or args.workers < 0:
        parser.error("--clients and --workers must not be negative")
    try:
        written = create_keys(args.directory, clients=args.clients, workers=args.workers)
    except UsageError as exc:
        print(f"zmqdask-keys: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"zmqdask-keys: error: cannot write keys in {args.directory}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for line in describe(Path(args.directory), written):
        print(line)
    if not written:
        print(f"{args.directory} already holds every requested key pair")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
