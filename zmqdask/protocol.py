"""Wire protocol: message layout, command table, and pure encode/decode with validation.

Every message is a ZeroMQ multipart message (the broker's ROUTER socket adds the sender's
identity frame in front, which is not part of what is described here)::

    frame 0   2 bytes: protocol version, command number
    frame 1   msgpack header: a list whose shape depends on the command (below)
    frame 2+  opaque payload frames (pickles and out-of-band buffers), never read by the broker

The header is small control data: keys, counts, flags, identities.  Payload frames are
attributed to header entries by the ``nframes`` counts in the order the entries appear.
Nothing here touches a socket; a malformed message raises :class:`ProtocolError`.

Header layouts (``key`` is ``str``, ``identity`` and ``fn_hash`` are ``bytes``)::

    HELLO        [role, info]                 peer -> broker; role is "client" | "worker" | "pool"
    WELCOME      [epoch, info]                broker -> peer
    HEARTBEAT    [epoch]                      both ways; a peer sends the epoch it knows ("" if none)
    GOODBYE      [reason]                     both ways; the sender is leaving (the broker
                                              answers a client's GOODBYE with one, once that
                                              client's work is dropped)
    UNKNOWN_PEER [epoch]                      broker -> peer: you are not registered, send HELLO
    ERROR        [code, text, refs]           broker -> peer: your message was refused

    SUBMIT       [functions, tasks]           client -> broker
                 functions: [fn_hash, ...]     one payload frame each (the pickled function)
                 tasks: [[key, fn_hash, deps, priority, retries, flags, nframes], ...]
    SCATTER      [entries, broadcast(, replace)]  client -> broker; entries [[key, nframes], ...];
                                              with replace, a key holding a scattered value
                                              takes these bytes instead (a named scatter again)
    RELEASE      [keys]                       client -> broker: no future of mine holds these
    CANCEL       [keys]                       client -> broker
    GATHER       [keys]                       client -> broker: send me these values
    RELAY_GATHER [keys]                       client -> broker: the same, never answered ELSEWHERE
    PLACE        [entries]                    client -> broker: where shall I send these values?
                                              entries [[key, nbytes], ...]; answered ELSEWHERE
    KEEP         [keys]                       client -> broker: run these to the end, wanted or not
    INFO         [request_id]                 client -> broker
    INFO_REPLY   [request_id, info]           broker -> client
    WANT         [keys]                       client -> broker: I hold futures for these keys,
                                              made from their names (``Future(key)``, a dataset
                                              fetched); answered with a REPORT entry for each key
                                              that has an outcome already (LOST: not known)
    DATASETS     [request_id, op, name, keys, override, nframes]  client -> broker: op "put"
                                              (the payload: the pickled dataset, which holds
                                              futures of ``keys``; the broker keeps those keys
                                              while it is published), "get", "delete" or "list";
                                              answered INFO_REPLY {"ok", and "error", "missing",
                                              "names", "keys" or "value"}
    COORDINATE   [request_id, kind, op, name, args, nframes]  client -> broker: an operation
                                              on a named variable, queue, event or semaphore
                                              (a lock is a semaphore of one lease; see
                                              broker.coordination).  ``args`` is a map (timeout,
                                              keys of the futures in the value, lease, ...); the
                                              payload is the pickled value of a set or put.
                                              Answered INFO_REPLY {"ok", ...}, once the operation
                                              is done: a wait ends with the condition or timeout
    WHO_HAS      [request_id, keys]           client -> broker: where are these values (None:
                                              every value)?  Answered INFO_REPLY with the map
                                              {"who_has": {key: [worker_id]}}, plus "has_what":
                                              {worker_id: [key]} for None (worker ids in hex)
    REPORT       [entries]                    broker -> client; entries [[key, code, detail, nframes]]

    COMPUTE      [functions, tasks]           broker -> worker
                 tasks: [[key, fn_hash, deps, flags, nframes], ...]; deps [[dep_key, holder], ...]
                 holder is the identity of a worker holding dep_key, or None if the receiver has
                 it or is computing it: a task sent ahead of its inputs runs once they finish
                 there, and is answered MISSING_DEPS if one of them fails or is cancelled
    STORE        [entries]                    broker -> worker; entries [[key, nframes], ...]
    GET          [request_id, keys]           broker -> worker: send these values
    DATA         [request_id, entries, missing]  worker -> broker (answering GET) and
                                              broker -> worker (answering FETCH)
    DELETE       [keys]                       broker -> worker: drop these values
    CANCEL_TASKS [keys]                       broker -> worker: drop these tasks if not started
    DONE         [entries]                    worker -> broker; entries [[key, code, detail, nframes]]
    FETCH        [request_id, holder, keys]   worker -> broker: get me these values from holder
    FETCH_FROM   [request_id, address, keys, nbytes]  broker -> worker, answering FETCH: they
                                              are large (nbytes in all); GET them from the
                                              holder's data socket yourself
    RELAY_FETCH  [request_id, holder, keys]   worker -> broker: FETCH, never answered FETCH_FROM
    WORKER_DIED  [identity, running_keys, exitcode]   pool -> broker
    SECEDE       [keys]                       worker -> broker: these running tasks wait for
                                              other tasks (get_client in a task); do not count
                                              them against my window and credit any more
    FORGET_FUNCTIONS [fn_hashes]              client -> broker: I will send these functions
                                              again before I use them; broker -> worker: no
                                              task of yours uses these any more, drop them

    RUN          [request_id, targets, nframes]   client -> broker: call this function on these
                                              workers (identities; None for all of them), outside
                                              their tasks; broker -> worker: [run_id, None, nframes].
                                              The payload is the pickled (function, args, kwargs)
    RUNNING      [request_id, targets]        broker -> client: RUN went to these workers; one
                                              RAN per target follows
    RAN          [request_id, identity, code, detail, nframes]   worker -> broker (identity is
                                              its own) and broker -> client: one worker's answer.
                                              code FINISHED (detail None; payload the pickled
                                              result), ERRED (as in DONE) or LOST (detail the
                                              reason: the worker died or was never there)
    RESTART      [request_id]                 client -> broker: cancel every client's work and
                                              replace every pool's worker processes;
                                              broker -> pool: replace your workers now
    RESTARTING   [request_id, replaced]       broker -> client: done; the workers (identities)
                                              being replaced
    SETUP        [request_id, name, nframes]  client -> broker: RUN on every worker, and keep the
                                              call (by name; the same name replaces it) for each
                                              worker that registers later; broker -> worker:
                                              run it before anything that follows, then RAN

A worker started with a data address also listens there for clients and other workers (see
:mod:`zmqdask.direct`), on a ROUTER socket of its own.  It answers GET with DATA, and takes
STORE as from the broker (confirming to the broker with DONE): a client told ELSEWHERE, or a
worker told FETCH_FROM, moves a large value to or from that worker in one hop.

Inline payloads: wherever an entry ends with ``nframes`` (SUBMIT, SCATTER, REPORT, COMPUTE,
STORE, DATA and DONE entries), that field may instead be a ``bytes`` value: the entry's payload
is then exactly that one frame, carried inside the header, and the entry takes no payload
frames.  Senders use it for small single-frame payloads (at most
:data:`INLINE_PAYLOAD_MAX_BYTES`): a ZeroMQ frame costs more to send and receive than a short
string inside the msgpack header.  Receivers accept either form in every such entry, and the
broker forwards a payload in the form it arrived in.  :func:`entry_payload` reads either.

Codes in REPORT and DONE entries, and their ``detail``::

    FINISHED      [type_name, nbytes]          nframes > 0 when the value travels with it
    ERRED         [type_name, message, origin_key]   one frame: the pickled (exception, traceback)
    CANCELLED     reason (str)
    LOST          reason (str)                 REPORT only
    ELSEWHERE     [type_name, nbytes, address]  REPORT only.  Answering GATHER: the value is
                                              large and its holder serves it at ``address``.
                                              Answering PLACE: send the value with STORE to the
                                              worker at ``address``, or with SCATTER to the
                                              broker if ``address`` is "" (also sent when the
                                              worker died before confirming it)
    MISSING_DEPS  [dep_key, ...]               DONE only: inputs could not be fetched
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from zmqdask import config
from zmqdask.config import MAX_KEY_LENGTH, PROTOCOL_VERSION
from zmqdask.errors import ProtocolError

# Command numbers.  Values are part of the wire format: never renumber, only append.
HELLO = 1
WELCOME = 2
HEARTBEAT = 3
GOODBYE = 4
UNKNOWN_PEER = 5
ERROR = 6
SUBMIT = 10
SCATTER = 11
RELEASE = 12
CANCEL = 13
GATHER = 14
INFO = 15
INFO_REPLY = 16
REPORT = 17
COMPUTE = 20
STORE = 21
GET = 22
DATA = 23
DELETE = 24
CANCEL_TASKS = 25
DONE = 26
FETCH = 27
WORKER_DIED = 28
SECEDE = 29
FORGET_FUNCTIONS = 30
RELAY_GATHER = 31
PLACE = 32
FETCH_FROM = 33
RELAY_FETCH = 34
KEEP = 35
RUN = 36
RAN = 37
RUNNING = 38
RESTART = 39
RESTARTING = 40
SETUP = 41
WHO_HAS = 42
WANT = 43
DATASETS = 44
COORDINATE = 45

COMMAND_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.isupper() and isinstance(value, int) and name not in {"PROTOCOL_VERSION", "MAX_KEY_LENGTH"}
}
"""Command number -> name, for logs and errors."""

# Peer roles named in HELLO.
ROLE_CLIENT = "client"
ROLE_WORKER = "worker"
ROLE_POOL = "pool"
ROLES = frozenset({ROLE_CLIENT, ROLE_WORKER, ROLE_POOL})

# Entry codes in REPORT and DONE.
FINISHED = 0
ERRED = 1
CANCELLED = 2
LOST = 3
MISSING_DEPS = 4
ELSEWHERE = 5
CANCELS_SEEN = 6
"""REPORT: the broker handled a CANCEL of ``detail`` keys (the entry names the last one);
what it reports after this is about keys as submitted after that CANCEL."""

# Task flags (bit set) in SUBMIT and COMPUTE.
FLAG_WANTED = 1
"""SUBMIT: the submitting client holds a future for this key."""
FLAG_PUSH_RESULT = 2
"""SUBMIT/COMPUTE: a client is waiting for the value; send it with the completion notice."""
FLAG_RETRY = 4
"""SUBMIT: if the key erred, run it again from the spec sent with it (``Future.retry``);
ignored for a key in any other state."""

# ERROR codes.
ERR_MALFORMED = "malformed"
ERR_TOO_LARGE = "too-large"
ERR_NOT_ALLOWED = "not-allowed"
ERR_UNKNOWN_KEY = "unknown-key"

INLINE_PAYLOAD_MAX_BYTES = 16 * 1024
"""Largest single-frame payload a sender carries inline in an entry instead of as a frame."""

_COMMAND_FRAMES: dict[int, bytes] = {cmd: bytes((PROTOCOL_VERSION, cmd)) for cmd in COMMAND_NAMES}



@dataclass(frozen=True, slots=True)
class Message:
    """A decoded message: its command number, validated header and payload frames."""

    command: int
    header: list[Any]
    payload: list[Any]

    @property
    def name(self) -> str:
        """The command's name, for logs."""
        return COMMAND_NAMES.get(self.command, str(self.command))


_PACK = msgpack.Packer(use_bin_type=True).pack
# One packer for every thread: ``pack`` runs in C and holds the GIL from start to end (headers
# hold only plain lists, dicts, strings, numbers and bytes: it calls no Python code), so two
# threads never share its buffer at once.  ``msgpack.packb`` would build a packer per message.


def encode(command: int, header: Sequence[Any], payload: Sequence[Any] = ()) -> list[Any]:
    """Build the frames of one message; payload frames are passed through untouched."""
    frames: list[Any] = [_COMMAND_FRAMES[command], _PACK(header)]
    if payload:
        frames.extend(payload)
    return frames


def _as_bytes(frame: Any) -> bytes:
    kind = type(frame)
    if kind is bytes:
        return frame
    if kind is zmq.Frame:
        return frame.bytes  # cached by the frame: no second copy
    if isinstance(frame, bytes):
        return frame
    buffer = getattr(frame, "buffer", None)  # another zmq.Frame type
    if buffer is not None:
        return bytes(buffer)
    return bytes(frame)


def decode(frames: Sequence[Any]) -> Message:
    """Parse and validate one message (without the ROUTER identity frame).

    Raises :class:`ProtocolError` for any deviation from the layouts in the module docstring;
    never any other exception.
    """
    if len(frames) < 2:
        raise ProtocolError(f"message has {len(frames)} frames, needs at least 2")
    head = _as_bytes(frames[0])
    if len(head) != 2:
        raise ProtocolError(f"command frame has {len(head)} bytes, expected 2")
    if head[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {head[0]} is not supported (this side speaks {PROTOCOL_VERSION})")
    command = head[1]
    validator = _VALIDATORS.get(command)
    if validator is None:
        raise ProtocolError(f"unknown command {command}")
    try:
        header = msgpack.unpackb(_as_bytes(frames[1]), raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(f"header of {COMMAND_NAMES[command]} is not valid msgpack: {exc}") from None
    if not isinstance(header, list):
        raise ProtocolError(f"header of {COMMAND_NAMES[command]} must be a list")
    payload = list(frames[2:])
    try:
        expected = validator(header)
    except ProtocolError as exc:
        raise ProtocolError(f"{COMMAND_NAMES[command]}: {exc}") from None
    except (TypeError, ValueError, IndexError) as exc:
        raise ProtocolError(f"{COMMAND_NAMES[command]}: {exc}") from None
    if expected != len(payload):
        raise ProtocolError(
            f"{COMMAND_NAMES[command]} announces {expected} payload frames but carries {len(payload)}"
        )
    return Message(command, header, payload)


# --- validators: each checks a header's shape and returns the payload frame count ---------


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ProtocolError(what)


def _arity(header: list[Any], n: int) -> None:
    if len(header) != n:
        raise ProtocolError(f"header has {len(header)} fields, expected {n}")


def _bad_key(value: Any) -> ProtocolError:
    return ProtocolError(f"invalid key {value!r:.80}")


def _key(value: Any) -> str:
    if (
        type(value) is not str
        or not 0 < len(value) <= MAX_KEY_LENGTH
        or (not value.isascii() and len(value.encode()) > MAX_KEY_LENGTH)
    ):
        raise _bad_key(value)
    return value


def _keys(value: Any) -> list[str]:
    if type(value) is not list:
        raise ProtocolError("keys must be a list")
    for key in value:
        # The checks of _key, inlined: key lists can be long.
        if type(key) is not str or not 0 < len(key) <= MAX_KEY_LENGTH:
            raise _bad_key(key)
        if not key.isascii() and len(key.encode()) > MAX_KEY_LENGTH:
            raise _bad_key(key)
    return value


_MAX_COUNT = 1 << 31


def _count(value: Any) -> int:
    if type(value) is not int or value < 0 or value > _MAX_COUNT:
        raise ProtocolError(f"invalid count {value!r:.40}")
    return value


def _frames(value: Any) -> int:
    """Payload frames announced by an entry's last field: a count, or 0 for an inline payload."""
    if type(value) is int:
        if 0 <= value <= _MAX_COUNT:
            return value
    elif type(value) is bytes:
        return 0
    raise ProtocolError(f"invalid count {value!r:.40}")


def _fn_hash(value: Any) -> None:
    if type(value) is not bytes or not 0 < len(value) <= 64:
        raise ProtocolError("invalid function hash")


def _identity(value: Any) -> bytes:
    if type(value) is not bytes or not value or len(value) > 255:
        raise ProtocolError("invalid peer identity")
    return value


def _v_hello(h: list[Any]) -> int:
    _arity(h, 2)
    _check(h[0] in ROLES, f"unknown role {h[0]!r:.40}")
    _check(type(h[1]) is dict, "info must be a map")
    return 0


def _v_welcome(h: list[Any]) -> int:
    _arity(h, 2)
    _check(type(h[0]) is str, "epoch must be a string")
    _check(type(h[1]) is dict, "info must be a map")
    return 0


def _v_epoch(h: list[Any]) -> int:
    _arity(h, 1)
    _check(type(h[0]) is str, "epoch must be a string")
    return 0


def _v_reason(h: list[Any]) -> int:
    _arity(h, 1)
    _check(type(h[0]) is str, "reason must be a string")
    return 0


def _v_error(h: list[Any]) -> int:
    _arity(h, 3)
    _check(type(h[0]) is str and type(h[1]) is str, "code and text must be strings")
    _check(type(h[2]) is list, "refs must be a list")
    return 0


def _v_submit(h: list[Any]) -> int:
    _arity(h, 2)
    functions, tasks = h
    _check(type(functions) is list and type(tasks) is list, "functions and tasks must be lists")
    total = len(functions)
    for fn_hash in functions:
        _fn_hash(fn_hash)
    max_key = MAX_KEY_LENGTH
    # One loop with the checks inlined: a SUBMIT can carry thousands of entries.
    for entry in tasks:
        if type(entry) is not list or len(entry) != 7:
            raise ProtocolError("task entry must have 7 fields")
        key, fn_hash, deps, priority, retries, flags, nframes = entry
        if type(key) is not str or not 0 < len(key) <= max_key or (not key.isascii() and len(key.encode()) > max_key):
            raise _bad_key(key)
        if type(fn_hash) is not bytes or not 0 < len(fn_hash) <= 64:
            raise ProtocolError("invalid function hash")
        if deps:
            _keys(deps)
        elif type(deps) is not list:
            raise ProtocolError("keys must be a list")
        if type(priority) is not int or not -_MAX_COUNT <= priority <= _MAX_COUNT:
            raise ProtocolError("priority must be an int")
        if type(retries) is not int or not 0 <= retries <= _MAX_COUNT:
            raise ProtocolError(f"invalid count {retries!r:.40}")
        if type(flags) is not int or not 0 <= flags <= _MAX_COUNT:
            raise ProtocolError(f"invalid count {flags!r:.40}")
        if type(nframes) is int and 0 <= nframes <= _MAX_COUNT:
            total += nframes
        elif type(nframes) is not bytes:
            raise ProtocolError(f"invalid count {nframes!r:.40}")
    return total


def _v_key_frames(entries: Any) -> int:
    _check(type(entries) is list, "entries must be a list")
    total = 0
    for entry in entries:
        _check(type(entry) is list and len(entry) == 2, "entry must be [key, nframes]")
        _key(entry[0])
        total += _frames(entry[1])
    return total


def _v_scatter(h: list[Any]) -> int:
    _check(len(h) in (2, 3), f"header has {len(h)} fields, expected 2 or 3")
    _check(type(h[1]) is bool, "broadcast must be a bool")
    _check(len(h) == 2 or type(h[2]) is bool, "replace must be a bool")
    return _v_key_frames(h[0])


def _v_place(h: list[Any]) -> int:
    _arity(h, 1)
    _check(type(h[0]) is list, "entries must be a list")
    for entry in h[0]:
        _check(type(entry) is list and len(entry) == 2, "entry must be [key, nbytes]")
        _key(entry[0])
        _check(type(entry[1]) is int and 0 <= entry[1] < 1 << 63, "nbytes must be a non-negative int")
    return 0


def _v_keys(h: list[Any]) -> int:
    _arity(h, 1)
    _keys(h[0])
    return 0


def _v_info(h: list[Any]) -> int:
    _arity(h, 1)
    _count(h[0])
    return 0


def _v_who_has(h: list[Any]) -> int:
    _arity(h, 2)
    _count(h[0])
    if h[1] is not None:
        _keys(h[1])
    return 0


def _v_info_reply(h: list[Any]) -> int:
    _arity(h, 2)
    _count(h[0])
    _check(type(h[1]) is dict, "info must be a map")
    return 0


def _erred_detail(detail: Any) -> None:
    _check(
        type(detail) is list and len(detail) == 3 and all(type(d) is str for d in detail),
        "ERRED detail must be [type_name, message, origin_key]",
    )


def _v_entries_with_codes(h: list[Any], allowed: frozenset[int]) -> int:
    _arity(h, 1)
    _check(type(h[0]) is list, "entries must be a list")
    total = 0
    max_key = MAX_KEY_LENGTH
    for entry in h[0]:
        if type(entry) is not list or len(entry) != 4:
            raise ProtocolError("entry must have 4 fields")
        key, code, detail, nframes = entry
        if type(key) is not str or not 0 < len(key) <= max_key or (not key.isascii() and len(key.encode()) > max_key):
            raise _bad_key(key)
        if code == FINISHED and type(code) is int:
            if type(detail) is not list or len(detail) != 2 or type(detail[0]) is not str or type(detail[1]) is not int:
                raise ProtocolError("FINISHED detail must be [type_name, nbytes]")
        elif type(code) is not int or code not in allowed:
            raise ProtocolError(f"unknown code {code!r:.20}")
        elif code == ERRED:
            _erred_detail(detail)
        elif code == MISSING_DEPS:
            _keys(detail)
        elif code == ELSEWHERE:
            _check(
                type(detail) is list
                and len(detail) == 3
                and type(detail[0]) is str
                and type(detail[1]) is int
                and type(detail[2]) is str,
                "ELSEWHERE detail must be [type_name, nbytes, address]",
            )
        elif code == CANCELS_SEEN:
            _check(type(detail) is int and 0 < detail <= _MAX_COUNT, "CANCELS_SEEN detail must be a key count")
        else:
            _check(type(detail) is str, "detail must be a string")
        if type(nframes) is int and 0 <= nframes <= _MAX_COUNT:
            total += nframes
        elif type(nframes) is not bytes:
            raise ProtocolError(f"invalid count {nframes!r:.40}")
    return total


_REPORT_CODES = frozenset({FINISHED, ERRED, CANCELLED, LOST, ELSEWHERE, CANCELS_SEEN})
_DONE_CODES = frozenset({FINISHED, ERRED, CANCELLED, MISSING_DEPS})


def _v_report(h: list[Any]) -> int:
    return _v_entries_with_codes(h, _REPORT_CODES)


def _v_done(h: list[Any]) -> int:
    return _v_entries_with_codes(h, _DONE_CODES)


def _v_compute(h: list[Any]) -> int:
    _arity(h, 2)
    functions, tasks = h
    _check(type(functions) is list and type(tasks) is list, "functions and tasks must be lists")
    total = len(functions)
    for fn_hash in functions:
        _fn_hash(fn_hash)
    max_key = MAX_KEY_LENGTH
    for entry in tasks:
        if type(entry) is not list or len(entry) != 5:
            raise ProtocolError("task entry must have 5 fields")
        key, fn_hash, deps, flags, nframes = entry
        if type(key) is not str or not 0 < len(key) <= max_key or (not key.isascii() and len(key.encode()) > max_key):
            raise _bad_key(key)
        if type(fn_hash) is not bytes or not 0 < len(fn_hash) <= 64:
            raise ProtocolError("invalid function hash")
        if type(deps) is not list:
            raise ProtocolError("deps must be a list")
        for dep in deps:
            _check(type(dep) is list and len(dep) == 2, "dep must be [key, holder]")
            _key(dep[0])
            if dep[1] is not None:
                _identity(dep[1])
        if type(flags) is not int or not 0 <= flags <= _MAX_COUNT:
            raise ProtocolError(f"invalid count {flags!r:.40}")
        if type(nframes) is int and 0 <= nframes <= _MAX_COUNT:
            total += nframes
        elif type(nframes) is not bytes:
            raise ProtocolError(f"invalid count {nframes!r:.40}")
    return total


def _v_store(h: list[Any]) -> int:
    _arity(h, 1)
    return _v_key_frames(h[0])


def _v_get(h: list[Any]) -> int:
    _arity(h, 2)
    _count(h[0])
    _keys(h[1])
    return 0


def _v_data(h: list[Any]) -> int:
    _arity(h, 3)
    _count(h[0])
    _keys(h[2])
    return _v_key_frames(h[1])


def _v_fetch(h: list[Any]) -> int:
    _arity(h, 3)
    _count(h[0])
    _identity(h[1])
    _keys(h[2])
    return 0


def _v_fetch_from(h: list[Any]) -> int:
    _arity(h, 4)
    _count(h[0])
    _check(type(h[1]) is str and bool(h[1]), "address must be a non-empty string")
    _keys(h[2])
    _check(type(h[3]) is int and 0 <= h[3] < 1 << 63, "nbytes must be a non-negative int")
    return 0


def _v_fn_hashes(h: list[Any]) -> int:
    _arity(h, 1)
    _check(type(h[0]) is list, "function hashes must be a list")
    for fn_hash in h[0]:
        _fn_hash(fn_hash)
    return 0


def _v_run(h: list[Any]) -> int:
    _arity(h, 3)
    _count(h[0])
    if h[1] is not None:
        _identities(h[1], "targets")
    return _frames(h[2])


def _identities(value: Any, what: str) -> None:
    _check(type(value) is list, f"{what} must be a list")
    for identity in value:
        _identity(identity)


def _v_request_identities(h: list[Any]) -> int:
    """RUNNING and RESTARTING: ``[request_id, identities]``."""
    _arity(h, 2)
    _count(h[0])
    _identities(h[1], "identities")
    return 0


def _v_ran(h: list[Any]) -> int:
    _arity(h, 5)
    _count(h[0])
    _identity(h[1])
    code, detail = h[2], h[3]
    if code == FINISHED and type(code) is int:
        _check(detail is None, "FINISHED detail must be None")
    elif code == ERRED and type(code) is int:
        _erred_detail(detail)
    elif code == LOST and type(code) is int:
        _check(type(detail) is str, "LOST detail must be a string")
    else:
        raise ProtocolError(f"unknown code {code!r:.20}")
    return _frames(h[4])


def _v_setup(h: list[Any]) -> int:
    _arity(h, 3)
    _count(h[0])
    _check(type(h[1]) is str and 0 < len(h[1]) <= MAX_KEY_LENGTH, "name must be a non-empty string")
    return _frames(h[2])


DATASET_OPS = frozenset({"put", "get", "delete", "list"})
"""The operations of a DATASETS request."""


def _v_datasets(h: list[Any]) -> int:
    _arity(h, 6)
    _count(h[0])
    op, name = h[1], h[2]
    _check(op in DATASET_OPS and type(op) is str, f"unknown dataset operation {op!r:.20}")
    _check(
        type(name) is str and (0 < len(name) <= MAX_KEY_LENGTH or (op == "list" and not name)),
        "name must be a non-empty string",
    )
    _keys(h[3])
    _check(type(h[4]) is bool, "override must be a bool")
    frames = _frames(h[5])
    _check((frames == 1 or type(h[5]) is bytes) if op == "put" else frames == 0, f"{op} carries the wrong payload")
    return frames


COORDINATION_OPS: dict[str, frozenset[str]] = {
    "variable": frozenset({"set", "get", "delete", "abandon"}),
    "queue": frozenset({"put", "get", "qsize", "abandon"}),
    "event": frozenset({"set", "clear", "is_set", "wait", "abandon"}),
    "semaphore": frozenset({"acquire", "release", "get_value", "abandon"}),
}
"""The operations of a COORDINATE request, by kind of object ("abandon": the client no
longer waits for its request ``args["request"]``)."""

_VALUE_OPS = frozenset({("variable", "set"), ("queue", "put")})


def _v_coordinate(h: list[Any]) -> int:
    _arity(h, 6)
    _count(h[0])
    kind, op, name, args = h[1], h[2], h[3], h[4]
    ops = COORDINATION_OPS.get(kind) if type(kind) is str else None
    if ops is None:
        raise ProtocolError(f"unknown kind {kind!r:.20}")
    _check(type(op) is str and op in ops, f"unknown {kind} operation {op!r:.20}")
    _check(type(name) is str and 0 < len(name) <= MAX_KEY_LENGTH, "name must be a non-empty string")
    _check(type(args) is dict, "args must be a map")
    timeout = args.get("timeout")
    _check(timeout is None or (type(timeout) in (int, float) and timeout >= 0), "timeout must be None or >= 0")
    _keys(args.get("keys", []))
    frames = _frames(h[5])
    carries = frames == 1 or type(h[5]) is bytes
    _check(carries if (kind, op) in _VALUE_OPS else frames == 0, f"{kind} {op} carries the wrong payload")
    return frames


def _v_worker_died(h: list[Any]) -> int:
    _arity(h, 3)
    _identity(h[0])
    _keys(h[1])
    _check(type(h[2]) is int, "exitcode must be an int")
    return 0


_VALIDATORS: dict[int, Callable[[list[Any]], int]] = {
    HELLO: _v_hello,
    WELCOME: _v_welcome,
    HEARTBEAT: _v_epoch,
    GOODBYE: _v_reason,
    UNKNOWN_PEER: _v_epoch,
    ERROR: _v_error,
    SUBMIT: _v_submit,
    SCATTER: _v_scatter,
    RELEASE: _v_keys,
    CANCEL: _v_keys,
    GATHER: _v_keys,
    RELAY_GATHER: _v_keys,
    PLACE: _v_place,
    INFO: _v_info,
    INFO_REPLY: _v_info_reply,
    REPORT: _v_report,
    COMPUTE: _v_compute,
    STORE: _v_store,
    GET: _v_get,
    DATA: _v_data,
    DELETE: _v_keys,
    CANCEL_TASKS: _v_keys,
    DONE: _v_done,
    FETCH: _v_fetch,
    FETCH_FROM: _v_fetch_from,
    RELAY_FETCH: _v_fetch,
    WORKER_DIED: _v_worker_died,
    SECEDE: _v_keys,
    FORGET_FUNCTIONS: _v_fn_hashes,
    KEEP: _v_keys,
    RUN: _v_run,
    RUNNING: _v_request_identities,
    RAN: _v_ran,
    RESTART: _v_info,
    RESTARTING: _v_request_identities,
    SETUP: _v_setup,
    WHO_HAS: _v_who_has,
    WANT: _v_keys,
    DATASETS: _v_datasets,
    COORDINATE: _v_coordinate,
}


def split_payload(counts: Sequence[int | bytes], payload: Sequence[Any], offset: int = 0) -> list[list[Any]]:
    """Cut ``payload[offset:]`` into consecutive groups of the given sizes.

    A ``bytes`` count is an inline payload (see the module docstring): its group is that one
    frame, and it takes nothing from ``payload``.
    """
    groups: list[list[Any]] = []
    position = offset
    for count in counts:
        if type(count) is bytes:
            groups.append([count])
            continue
        groups.append(list(payload[position : position + count]))  # type: ignore[operator]
        position += count  # type: ignore[operator]
    return groups


def entry_payload(field: int | bytes, payload: Sequence[Any], position: int) -> tuple[list[Any], int]:
    """An entry's payload frames and the position after them, for its ``nframes`` field.

    ``field`` is a frame count (the frames are ``payload[position:position + field]``) or an
    inline payload (``bytes``: the one frame itself, taking nothing from ``payload``).
    """
    if type(field) is bytes:
        return [field], position
    end = position + field  # type: ignore[operator]
    return list(payload[position:end]), end


def payload_field(frames: Sequence[Any]) -> int | bytes:
    """The ``nframes`` field a sender puts in an entry for ``frames``: inline when it is worth it.

    A single ``bytes`` frame of at most :data:`INLINE_PAYLOAD_MAX_BYTES` travels inline (the
    caller then leaves it out of the message's payload frames); anything else is counted.
    """
    if len(frames) == 1:
        frame = frames[0]
        if type(frame) is bytes and len(frame) <= INLINE_PAYLOAD_MAX_BYTES:
            return frame
    return len(frames)


def frame_nbytes(frame: Any) -> int:
    """Size of a payload frame (``bytes``, ``memoryview`` or ``zmq.Frame``) in bytes."""
    if isinstance(frame, (bytes, bytearray)) or type(frame) is zmq.Frame:
        return len(frame)
    buffer = getattr(frame, "buffer", None)
    if buffer is not None:
        return int(buffer.nbytes)
    return int(memoryview(frame).nbytes)


_SOCKET_SEND = zmq.backend.Socket.send
_SNDMORE = int(zmq.SNDMORE)


def send_frames(sock: Any, frames: Sequence[Any], flags: int = 0) -> None:
    """Send ``frames`` as (the rest of) one message, each with ``flags`` (``zmq.NOBLOCK``).

    Frames of ``config.ZERO_COPY_THRESHOLD_BYTES`` and more go without a copy; smaller ones
    are copied, which costs less.  A real socket is sent to through pyzmq's Cython method
    (its Python wrappers cost more than the call); anything else, a test double say,
    through its own ``send``.  Raises what the send raises (``zmq.Again``, ...).
    """
    last = len(frames) - 1
    threshold = config.ZERO_COPY_THRESHOLD_BYTES
    if isinstance(sock, zmq.backend.Socket):
        send = _SOCKET_SEND
        for index, frame in enumerate(frames):
            nbytes = len(frame) if type(frame) is bytes else frame_nbytes(frame)
            send(sock, frame, flags | _SNDMORE if index < last else flags, nbytes < threshold, False)
        return
    for index, frame in enumerate(frames):
        nbytes = len(frame) if type(frame) is bytes else frame_nbytes(frame)
        sock.send(frame, flags | _SNDMORE if index < last else flags, copy=nbytes < threshold)
