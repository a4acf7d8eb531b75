"""Command line entry point of the broker daemon: ``zmqdask-broker`` and ``python -m broker``."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import signal
import stat
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from broker.server import BrokerServer
from zmqdask.config import DEFAULT_PORT, MAX_MESSAGE_BYTES
from zmqdask.errors import CommunicationError, UsageError
from zmqdask.security import BrokerSecurity

logger = logging.getLogger(__name__)

EXIT_OK = 0
"""Stopped by SIGTERM/SIGINT after saying goodbye to every peer."""
EXIT_USAGE = 2
"""Invalid command line (argparse's convention)."""
EXIT_BIND_FAILED = 3
"""The address could not be bound (for example the port is in use)."""

LISTENING_LINE = "zmqdask-broker listening on {address}"
"""The one line printed to stdout once the socket is bound; other processes parse it."""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

GC_THRESHOLDS = (50_000, 20, 100)
"""Cyclic garbage collector thresholds of the broker process.  Its objects are long-lived task
records and it breaks its own reference cycles when it forgets a record, so collecting less
often than Python's default (700, 10, 10) costs little memory and saves about a quarter of
the CPU time of a busy broker."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``zmqdask-broker``."""
    parser = argparse.ArgumentParser(
        prog="zmqdask-broker",
        description=(
            "Run the zmqdask broker: clients, workers and worker pools all connect to this one "
            "address. Once listening it prints one line, 'zmqdask-broker listening on tcp://HOST:PORT', "
            "to stdout. With --host 0.0.0.0 HOST is this machine's host name (127.0.0.1 if the name "
            "does not resolve); with --port 0 PORT is the port actually chosen."
        ),
    )
    parser.add_argument("--host", default="0.0.0.0", help="interface to bind (default: %(default)s, all of them)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="TCP port; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--ipc",
        metavar="PATH",
        default=None,
        help=(
            "also listen on the Unix socket PATH: clients and workers on this host may connect to "
            "ipc://PATH, which is quicker than TCP (the local cluster of Client() does this); "
            "refused if another process listens there, removed when the broker stops"
        ),
    )
    parser.add_argument(
        "--curve-keys",
        metavar="DIR",
        default=None,
        help=(
            "require CURVE keys and encrypt all traffic: DIR holds broker.key_secret, the public keys "
            "of allowed clients in DIR/clients/*.key and of allowed workers in DIR/workers/*.key "
            "(write them with zmqdask-keys DIR). Without it anyone who can reach the port is served."
        ),
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=MAX_MESSAGE_BYTES,
        metavar="BYTES",
        help="refuse (with an error to the sender) any message larger than this (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging threshold for stderr (default: %(default)s)",
    )
    return parser


PARENT_CHECK_INTERVAL_S = 1.0
"""How often a broker started by a local cluster checks that its parent is alive."""


def _stop_with_parent(server: BrokerServer) -> threading.Event:
    """Stop when the process that started us exits, if it asked for that.

    A local cluster sets ``ZMQDASK_PARENT_PID`` to its own pid; a broker started any other
    way (a shell, systemd) ignores it.  The event returned is set if the parent was found gone.
    """
    orphaned = threading.Event()
    parent = os.environ.get("ZMQDASK_PARENT_PID")
    if parent is None or parent != str(os.getppid()):
        return orphaned

    def watch() -> None:
        # Orphaned children are re-parented, so a changed parent pid means ours is gone.
        while not server.stopped.wait(PARENT_CHECK_INTERVAL_S):
            if str(os.getppid()) != parent:
                logger.warning("the process that started this broker (pid %s) is gone: stopping", parent)
                orphaned.set()
                server.stop()
                return

    threading.Thread(target=watch, name="zmqdask-parent-watch", daemon=True).start()
    return orphaned


def _remove_socket_directory(ipc_path: str) -> None:
    """Remove the private directory a local cluster made for our Unix socket.

    Its owner removes it when it closes the cluster; one that died first (SIGKILL) cannot.
    Only a directory named as the local cluster names them, holding nothing but Unix sockets
    (ours and the workers' data sockets, which may outlive us by a moment), is removed.
    """
    directory = os.path.dirname(os.path.abspath(ipc_path))
    if not os.path.basename(directory).startswith("zmqdask-"):
        return
    try:
        with os.scandir(directory) as entries:
            if all(stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode) for entry in entries):
                shutil.rmtree(directory, ignore_errors=True)
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the broker until SIGTERM or SIGINT; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_message_bytes < 1024:
        parser.error("--max-message-bytes must be at least 1024")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, not {args.port}")
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    gc.set_threshold(*GC_THRESHOLDS)
    security = None
    if args.curve_keys is not None:
        try:
            security = BrokerSecurity.from_directory(args.curve_keys)
        except UsageError as exc:
            parser.error(f"--curve-keys: {exc}")
    server = BrokerServer(
        args.host, args.port, security=security, max_message_bytes=args.max_message_bytes, ipc_path=args.ipc
    )

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s: stopping", signal.Signals(signum).name)
        server.stop()

    # Installed before binding: a stop requested during startup is honoured (the loop then
    # says goodbye and returns at once) instead of killing the process mid-way.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        address = server.bind()
    except CommunicationError as exc:
        print(f"zmqdask-broker: error: {exc}", file=sys.stderr, flush=True)
        server.close()
        return EXIT_BIND_FAILED

    print(LISTENING_LINE.format(address=address), flush=True)
    orphaned = _stop_with_parent(server)
    try:
        server.serve_forever()
    finally:
        server.close()
        # A local cluster's broker (its owner named itself in ZMQDASK_PARENT_PID) removes the
        # owner's socket directory however it stops: the owner may be gone (SIGKILL), or be
        # stopping with it (SIGTERM to the whole process group, as `timeout` and
        # `docker stop` send) without running its own clean-up.
        if args.ipc and (orphaned.is_set() or os.environ.get("ZMQDASK_PARENT_PID") is not None):
            _remove_socket_directory(args.ipc)
    return EXIT_OK
