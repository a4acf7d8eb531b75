"""CURVE security: key files, the keys of clients and workers, and the broker's authenticator and HELLO guard.

Without keys nothing here is used and every peer that reaches the broker's port is served.
With keys the broker's one ROUTER socket is a CURVE server: ZeroMQ encrypts every byte, and
pyzmq's authenticator (running in a thread of its own) admits only public keys found in one
of two allow-lists.  The list a key came from is the connection's ZAP user id, which
ZeroMQ attaches to every message as its ``User-Id`` property; the broker checks it when a
peer says HELLO, so a client key cannot register as a worker or a pool.

Key directory layout (written by ``zmqdask-keys DIR``, read by ``--curve-keys DIR``)::

    DIR/broker.key                the broker's public key: every client and worker host
    DIR/broker.key_secret         the broker's secret key: the broker host only
    DIR/clients/NAME.key          public keys allowed to register as clients
    DIR/clients/NAME.key_secret   a client's secret key: that client only
    DIR/workers/NAME.key          public keys allowed to register as workers and pools
    DIR/workers/NAME.key_secret   a worker host's secret key: that host only

The broker reads ``broker.key_secret`` and the ``*.key`` files of both lists; a client reads
``broker.key`` and its own ``clients/NAME.key_secret`` (which holds its public key too).
Keys are read when a process starts: after adding or removing one, restart the broker.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from zmqdask.config import PROTOCOL_VERSION
from zmqdask.errors import CommunicationError, ProtocolError, UsageError
from zmqdask.protocol import (
    ERR_NOT_ALLOWED,
    ERROR,
    HELLO,
    ROLE_CLIENT,
    ROLE_POOL,
    ROLE_WORKER,
    ROLES,
    decode,
    encode,
)

logger = logging.getLogger(__name__)

BROKER_KEY_NAME = "broker"
"""Base name of the broker's key pair in a key directory."""
CLIENTS_DIR = "clients"
"""Sub-directory holding the keys allowed to register as clients."""
WORKERS_DIR = "workers"
"""Sub-directory holding the keys allowed to register as workers and pools."""
PUBLIC_SUFFIX = ".key"
"""File suffix of a public key (pyzmq's certificate format)."""
SECRET_SUFFIX = ".key_secret"
"""File suffix of a key pair that includes the secret key."""
ZAP_DOMAIN = "zmqdask"
"""ZAP domain of the broker's socket: the authenticator answers for this domain only."""
Z85_KEY_LENGTH = 40
"""Length of a CURVE key in its Z85 text form (32 bytes raw)."""

ROLE_DIRS: Mapping[str, str] = {ROLE_CLIENT: CLIENTS_DIR, ROLE_WORKER: WORKERS_DIR, ROLE_POOL: WORKERS_DIR}
"""The allow-list (sub-directory) a peer of each HELLO role must have its key in."""

MAX_WARNED = 1000
"""Bound on the keys and user ids whose first refusal is logged at WARNING."""

_HELLO_HEAD = bytes((PROTOCOL_VERSION, HELLO))


# --- key files ---------------------------------------------------------------------------


def _check_curve() -> None:
    if not zmq.has("curve"):
        raise UsageError("this libzmq was built without CURVE support, so keys cannot be used")


def _z85_key(value: bytes | str, what: str) -> bytes:
    """A CURVE key in Z85 form as bytes; raises UsageError for anything else."""
    key = value.encode("ascii", "replace") if isinstance(value, str) else bytes(value)
    if len(key) != Z85_KEY_LENGTH:
        raise UsageError(f"{what} must be a {Z85_KEY_LENGTH}-character Z85 CURVE key, got {len(key)} characters")
    try:
        z85.decode(key)
    except (ValueError, KeyError, IndexError):
        raise UsageError(f"{what} is not a valid Z85 CURVE key") from None
    return key


def read_key_file(path: str | os.PathLike[str], *, secret: bool) -> tuple[bytes, bytes | None]:
    """``(public_key, secret_key)`` in Z85 from a key file; ``secret`` requires the secret key.

    Raises :class:`UsageError` naming the file when it is missing or malformed.
    """
    try:
        public, secret_key = zmq.auth.load_certificate(os.path.expanduser(path))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the key file {os.fspath(path)}: {exc}") from None
    public = _z85_key(public, f"the public key in {os.fspath(path)}")
    if secret_key is not None:
        secret_key = _z85_key(secret_key, f"the secret key in {os.fspath(path)}")
        if zmq.curve_public(secret_key) != public:
            raise UsageError(f"the public and secret keys in {os.fspath(path)} do not belong together")
    elif secret:
        raise UsageError(f"{os.fspath(path)} holds no secret key (expected a *{SECRET_SUFFIX} file)")
    return public, secret_key


def create_key_pair(directory: str | os.PathLike[str], name: str) -> bool:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``directory`` unless the pair exists.

    Returns whether a pair was written.  The secret file is readable by its owner only, and
    both files appear together: they are written in a private temporary directory and moved
    into place.
    """
    _check_curve()
    target = Path(directory)
    if not name or os.sep in name or name.startswith("."):
        raise UsageError(f"invalid key name {name!r}")
    public_path = target / f"{name}{PUBLIC_SUFFIX}"
    secret_path = target / f"{name}{SECRET_SUFFIX}"
    if secret_path.exists():
        return False
    if public_path.exists():
        raise UsageError(f"{public_path} exists without its secret key; remove it or choose another name")
    staging = tempfile.mkdtemp(prefix=".new-key-", dir=target)  # mode 0700
    try:
        staged_public, staged_secret = zmq.auth.create_certificates(staging, name)
        os.chmod(staged_secret, 0o600)
        os.chmod(staged_public, 0o644)
        # The secret goes first: a public key without its secret is reported as an error above.
        os.replace(staged_secret, secret_path)
        os.replace(staged_public, public_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def create_keys(directory: str | os.PathLike[str], clients: int = 1, workers: int = 1) -> list[Path]:
    """Make sure ``directory`` holds the broker's pair, ``client-1``..``client-N`` and ``worker-1``..``worker-M``.

    Existing pairs are kept, so running it again with larger counts adds keys.  Directories
    it creates are private to their owner.  Returns the paths of the files written.
    """
    if clients < 0 or workers < 0:
        raise UsageError("the numbers of client and worker keys must not be negative")
    root = Path(directory).expanduser()
    written: list[Path] = []
    for path in (root, root / CLIENTS_DIR, root / WORKERS_DIR):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    plan = [(root, BROKER_KEY_NAME)]
    plan += [(root / CLIENTS_DIR, f"client-{i}") for i in range(1, clients + 1)]
    plan += [(root / WORKERS_DIR, f"worker-{i}") for i in range(1, workers + 1)]
    for folder, name in plan:
        if create_key_pair(folder, name):
            written += [folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"]
    return written


def _single_secret(folder: Path, role: str) -> Path:
    secrets = sorted(folder.glob(f"*{SECRET_SUFFIX}"))
    if len(secrets) == 1:
        return secrets[0]
    if not secrets:
        raise UsageError(f"no {role} key pair (*{SECRET_SUFFIX}) in {folder}")
    names = ", ".join(path.name[: -len(SECRET_SUFFIX)] for path in secrets)
    raise UsageError(f"several {role} keys in {folder} ({names}): name the one to use")


# --- the keys of a client or a worker ------------------------------------------------------


@dataclass(frozen=True)
class Security:
    """The CURVE keys a client, worker or pool connects with (all in Z85 text form).

    ``Security.from_directory(DIR)`` reads a key directory (see the module docstring);
    ``Security.from_files(key_file, broker_key_file)`` reads two files.  Pass it as
    ``Client(address, security=...)``; ``zmqdask-worker --curve-keys DIR`` builds one.
    """

    broker_public_key: bytes
    """The broker's public key: the connection fails unless the broker holds its secret."""
    public_key: bytes
    """This peer's public key, which must be in the broker's allow-list for its role."""
    secret_key: bytes = field(repr=False)
    """This peer's secret key (never shown in reprs)."""

    def __post_init__(self) -> None:
        _check_curve()
        object.__setattr__(self, "broker_public_key", _z85_key(self.broker_public_key, "broker_public_key"))
        object.__setattr__(self, "public_key", _z85_key(self.public_key, "public_key"))
        object.__setattr__(self, "secret_key", _z85_key(self.secret_key, "secret_key"))
        if zmq.curve_public(self.secret_key) != self.public_key:
            raise UsageError("public_key and secret_key do not belong together")

    @classmethod
    def from_files(cls, key_file: str | os.PathLike[str], broker_key_file: str | os.PathLike[str]) -> Security:
        """Keys from this peer's ``*.key_secret`` file and the broker's public ``broker.key``."""
        public, secret = read_key_file(key_file, secret=True)
        broker_public, _ = read_key_file(broker_key_file, secret=False)
        return cls(broker_public_key=broker_public, public_key=public, secret_key=cast(bytes, secret))

    @classmethod
    def from_directory(
        cls, directory: str | os.PathLike[str], role: str = ROLE_CLIENT, name: str | None = None
    ) -> Security:
        """Keys for ``role`` from a key directory: ``broker.key`` and ``clients/`` or ``workers/NAME.key_secret``.

        ``name`` picks the pair when the sub-directory holds several; without it there must
        be exactly one.
        """
        if role not in ROLE_DIRS:
            raise UsageError(f"unknown role {role!r}: use one of {', '.join(sorted(ROLES))}")
        root = Path(directory).expanduser()
        if not root.is_dir():
            raise UsageError(f"the key directory {root} does not exist")
        folder = root / ROLE_DIRS[role]
        key_file = folder / f"{name}{SECRET_SUFFIX}" if name else _single_secret(folder, role)
        return cls.from_files(key_file, root / f"{BROKER_KEY_NAME}{PUBLIC_SUFFIX}")

    @classmethod
    def from_options(
        cls,
        directory: str | os.PathLike[str] | None,
        key_file: str | os.PathLike[str] | None,
        broker_key_file: str | os.PathLike[str] | None,
        role: str,
    ) -> Security | None:
        """Keys from command-line style options (``--curve-keys DIR``, ``--key FILE``, ``--broker-key FILE``).

        ``key_file`` and ``broker_key_file`` override the files found in ``directory``; None
        when no option is given.
        """
        if directory is None and key_file is None and broker_key_file is None:
            return None
        if directory is None and (key_file is None or broker_key_file is None):
            raise UsageError("without a key directory, give both this peer's key file and the broker's key file")
        root = Path(directory).expanduser() if directory is not None else None
        if root is not None and not root.is_dir():
            raise UsageError(f"the key directory {root} does not exist")
        if key_file is None:
            key_file = _single_secret(cast(Path, root) / ROLE_DIRS[role], role)
        if broker_key_file is None:
            broker_key_file = cast(Path, root) / f"{BROKER_KEY_NAME}{PUBLIC_SUFFIX}"
        return cls.from_files(key_file, broker_key_file)

    def configure(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client of the broker; call it before ``connect``."""
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_serverkey = self.broker_public_key


def as_security(value: Security | str | os.PathLike[str] | None, role: str = ROLE_CLIENT) -> Security | None:
    """A :class:`Security` from itself, a key directory path, or None (no keys)."""
    if value is None or isinstance(value, Security):
        return value
    if isinstance(value, (str, os.PathLike)):
        return Security.from_directory(value, role)
    raise UsageError(f"security must be a zmqdask.security.Security or a key directory, got {value!r}")


# --- the broker's keys ---------------------------------------------------------------------


def _read_allow_list(folder: Path) -> dict[bytes, str]:
    if not folder.is_dir():
        return {}
    keys: dict[bytes, str] = {}
    for path in sorted(folder.glob(f"*{PUBLIC_SUFFIX}")):
        public, _ = read_key_file(path, secret=False)
        keys[public] = path.name[: -len(PUBLIC_SUFFIX)]
    return keys


@dataclass(frozen=True)
class BrokerSecurity:
    """The broker's key pair and its two allow-lists of public keys (Z85), read from a key directory."""

    public_key: bytes
    """The broker's public key (clients and workers need it)."""
    secret_key: bytes = field(repr=False)
    """The broker's secret key."""
    clients: tuple[tuple[bytes, str], ...] = ()
    """``(public_key, name)`` of every key allowed to register as a client."""
    workers: tuple[tuple[bytes, str], ...] = ()
    """``(public_key, name)`` of every key allowed to register as a worker or a pool."""

    def __post_init__(self) -> None:
        _check_curve()
        object.__setattr__(self, "public_key", _z85_key(self.public_key, "the broker's public key"))
        object.__setattr__(self, "secret_key", _z85_key(self.secret_key, "the broker's secret key"))
        if zmq.curve_public(self.secret_key) != self.public_key:
            raise UsageError("the broker's public and secret keys do not belong together")

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> BrokerSecurity:
        """``broker.key_secret``, ``clients/*.key`` and ``workers/*.key`` of a key directory."""
        root = Path(directory).expanduser()
        if not root.is_dir():
            raise UsageError(f"the key directory {root} does not exist (create one with `zmqdask-keys {root}`)")
        public, secret = read_key_file(root / f"{BROKER_KEY_NAME}{SECRET_SUFFIX}", secret=True)
        clients = _read_allow_list(root / CLIENTS_DIR)
        workers = _read_allow_list(root / WORKERS_DIR)
        if not clients and not workers:
            raise UsageError(f"no public keys in {root / CLIENTS_DIR} or {root / WORKERS_DIR}: nobody could connect")
        return cls(
            public_key=public,
            secret_key=cast(bytes, secret),
            clients=tuple(clients.items()),
            workers=tuple(workers.items()),
        )

    def user_ids(self) -> dict[bytes, str]:
        """Public key -> the ZAP user id of its connections, e.g. ``clients/alice``.

        A key in both lists gets ``clients/NAME+workers/NAME``.
        """
        ids: dict[bytes, list[str]] = {}
        for folder, entries in ((CLIENTS_DIR, self.clients), (WORKERS_DIR, self.workers)):
            for public, name in entries:
                ids.setdefault(public, []).append(f"{folder}/{name}")
        return {public: "+".join(parts) for public, parts in ids.items()}

    def describe(self) -> str:
        """A short summary for logs."""
        return f"{len(self.clients)} client keys, {len(self.workers)} worker keys"


def roles_of(user_id: str) -> frozenset[str]:
    """The HELLO roles a connection with this ZAP user id may register as."""
    folders = {part.split("/", 1)[0] for part in user_id.split("+") if "/" in part}
    return frozenset(role for role, folder in ROLE_DIRS.items() if folder in folders)


class KeyAuthenticator(ThreadAuthenticator):
    """pyzmq's thread authenticator, admitting the keys of a :class:`BrokerSecurity`.

    Its user id for a key says which allow-list the key is in (see
    :meth:`BrokerSecurity.user_ids`).  It answers ZAP requests for :data:`ZAP_DOMAIN` in a
    thread of its own, so the broker's loop never waits for it.
    """

    def __init__(self, context: zmq.Context[Any], security: BrokerSecurity) -> None:
        super().__init__(context, log=logging.getLogger(f"{__name__}.zap"))
        self._user_ids = security.user_ids()
        self._warned: set[bytes] = set()

    def start(self) -> None:
        """Bind the ZAP handler of the context and start answering for :data:`ZAP_DOMAIN`."""
        super().start()
        self.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """Whether the Z85 public ``key`` is in an allow-list (called by the authenticator)."""
        if key in self._user_ids:
            return True
        # Only the authenticator's thread calls this, so the set needs no lock.
        if key not in self._warned and len(self._warned) < MAX_WARNED:
            self._warned.add(key)
            logger.warning("refused a connection with an unknown CURVE key %s", key.decode("ascii", "replace"))
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The user id of an admitted key (raw 32 bytes): which list and name it has."""
        return self._user_ids.get(z85.encode(client_public_key), "")


class CurveServer:
    """The broker side of CURVE: the authenticator, the socket options, and the HELLO guard.

    Create it before binding (the ZAP handler must answer the first connection), call
    :meth:`configure` on the ROUTER socket, pass every received message to :meth:`check`,
    and :meth:`close` it after closing the socket and before terminating the context.
    """

    def __init__(self, security: BrokerSecurity, context: zmq.Context[Any]) -> None:
        self.security = security
        self._authenticator = KeyAuthenticator(context, security)
        try:
            self._authenticator.start()
        except zmq.ZMQError as exc:
            self._authenticator.stop()
            raise CommunicationError(
                f"cannot start the CURVE authenticator: {exc.strerror} (one ZeroMQ context has one ZAP handler)"
            ) from exc
        self._roles: dict[str, frozenset[str]] = {user: roles_of(user) for user in security.user_ids().values()}
        self._bound: dict[bytes, str] = {}
        self._warned: set[str] = set()
        self.refused = 0
        """Messages refused by :meth:`check`."""

    def configure(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE server with the broker's keys; call it before ``bind``."""
        sock.curve_server = True
        sock.curve_secretkey = self.security.secret_key
        sock.curve_publickey = self.security.public_key
        sock.zap_domain = ZAP_DOMAIN.encode()

    def check(
        self, identity: bytes, frames: list[Any], peers: Mapping[bytes, Any]
    ) -> list[tuple[bytes, list[Any]]] | None:
        """None to pass a received message on, or the ERROR to send back instead.

        ``frames`` are the ``zmq.Frame`` objects as received (identity first); ``peers`` is
        the broker's registry by identity.  A HELLO must name a role the key's allow-list
        grants, and binds the identity to the key.  Any other message must come with the
        key its identity registered with: ROUTER_HANDOVER lets a new connection take over a
        registered identity, and without this check a client key could then speak as a
        worker whose identity it learnt.
        """
        try:
            user = cast(str, frames[0].get("User-Id"))
        except zmq.ZMQError:
            user = ""  # no ZAP user id: the connection did not pass the authenticator
        head = frames[1] if len(frames) > 1 else None
        if head is not None and len(head) == 2 and head.bytes == _HELLO_HEAD:
            return self._check_hello(identity, user, frames, peers)
        bound = self._bound.get(identity)
        if bound is None or bound == user:
            return None  # an unregistered identity is told UNKNOWN_PEER by the broker
        return self._refuse(identity, user, f"this identity is registered with another key ({bound})")

    def _check_hello(
        self, identity: bytes, user: str, frames: list[Any], peers: Mapping[bytes, Any]
    ) -> list[tuple[bytes, list[Any]]] | None:
        try:
            role = decode([frame.bytes for frame in frames[1:3]]).header[0]
        except (ProtocolError, IndexError):
            return None  # the broker answers a malformed HELLO itself
        if role not in self._roles.get(user, frozenset()):
            return self._refuse(identity, user, f"the key {user or '(unknown)'} may not register as a {role}")
        bound = self._bound.get(identity)
        if bound is not None and bound != user and identity in peers:
            return self._refuse(identity, user, f"this identity is registered with another key ({bound})")
        if len(self._bound) >= 2 * len(peers) + 1024:
            # Forget identities that are no longer registered; amortised over many HELLOs.
            self._bound = {ident: key for ident, key in self._bound.items() if ident in peers}
        self._bound[identity] = user
        return None

    def _refuse(self, identity: bytes, user: str, text: str) -> list[tuple[bytes, list[Any]]]:
        self.refused += 1
        reason = f"{user}: {text}"
        if reason not in self._warned and len(self._warned) < MAX_WARNED:
            self._warned.add(reason)
            logger.warning(
                "refused a message from %s (key %s): %s (the same refusal again is logged at DEBUG)",
                identity.hex(),
                user or "(unknown)",
                text,
            )
        else:
            logger.debug("refused a message from %s (key %s): %s", identity.hex(), user, text)
        return [(identity, encode(ERROR, [ERR_NOT_ALLOWED, text, []]))]

    def close(self) -> None:
        """Stop the authenticator (idempotent)."""
        self._authenticator.stop()


# --- telling why a connection fails --------------------------------------------------------

_FAILURE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)


class HandshakeMonitor:
    """Watches a connecting socket for failed handshakes, to explain a broker that stays silent.

    Attach it before ``connect``; :meth:`failure` reads the events so far without waiting.
    ``keyed`` says whether the socket connects with CURVE keys.
    """

    def __init__(self, sock: zmq.Socket[Any], role: str = ROLE_CLIENT, *, keyed: bool = True) -> None:
        self._sock = sock
        self._role = role
        self._keyed = keyed
        self._monitor: zmq.Socket[Any] | None = sock.get_monitor_socket(_FAILURE_EVENTS)
        self._seen = 0
        """Bit set of the failure events seen so far."""

    def failure(self) -> str | None:
        """Why the broker refused the handshakes so far, or None if none failed."""
        monitor = self._monitor
        while monitor is not None and monitor.poll(0):
            self._seen |= recv_monitor_message(monitor)["event"]
        return self._explain(self._seen) if self._seen else None

    def _explain(self, seen: int) -> str:
        # A broker whose mechanism differs may close the connection before saying so (seen as
        # a failure without detail), so the specific events take precedence.
        if seen & zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if self._keyed:
                return "the broker does not use CURVE keys (it was started without --curve-keys)"
            return (
                "the broker requires CURVE keys (it was started with --curve-keys): connect with "
                "the broker's public key and a key pair from its allow-list"
            )
        if seen & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            folder = ROLE_DIRS.get(self._role, CLIENTS_DIR)
            return (
                f"the broker refused this {self._role}'s CURVE key: its public key is not in the "
                f"broker's {folder}/ directory (add it there and restart the broker)"
            )
        if self._keyed:
            return (
                "the CURVE handshake failed: either the broker does not use keys, or the broker's "
                "public key given here (broker.key) is not the broker's"
            )
        return (
            "the service at this address closed the connection during the handshake: it is not a zmqdask "
            "broker, or it requires CURVE keys (it was started with --curve-keys)"
        )

    def close(self) -> None:
        """Detach from the socket (call before closing the socket; idempotent)."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass  # the socket is already closed
        monitor.close(linger=0)
