"""Actor <-> learner transport: ZeroMQ + msgpack, HMAC-authenticated, bounded, no pickle.

Wire format: one ZeroMQ frame = 32-byte HMAC-SHA256 tag ++ msgpack payload. The
tag covers the payload and is keyed with the shared token, so a peer without the
token can neither inject transitions nor push weights; a message whose tag does
not verify is dropped and counted (``rejected``). numpy arrays travel as raw
bytes plus dtype and shape (msgpack ext type 1); object arrays are refused.

Replays are refused too. Every sender opens a *session* when it is created:
a random ``session`` id and its start time ``epoch`` (wall clock, ns), both
inside the authenticated payload, and it stamps each message with the time it
was sent (``sent``, ns) and a counter (an actor's ``seq`` must rise within its
session; the learner's weights ``version`` must not fall within its session).
A receiver keeps, per sender, the newest session it has seen, ordered by
``(epoch, session)``; a frame of an *older* session is refused even if this
receiver never saw that session (frames recorded from yesterday's actor cannot
supersede today's), so weights never roll back across sessions either. A frame
stamped more than ``replay_window_s`` away from the receiver's clock is refused
(a recorded frame replayed to a learner that has just restarted and knows no
session yet); keep the machines' clocks within that window (NTP), and note
that a restarted sender whose clock stepped back behind its previous session
is refused until the window has passed. Refused frames are counted:
``forged`` (HMAC fails), ``replayed`` (old counter, older session, stale or
future stamp) and ``malformed`` (signed, but not a message the receiver can
use: no ``batch``, wrong types, non-finite values); none of them raises.

Frames are capped in size (ZeroMQ ``MAXMSGSIZE`` on the receiving sockets,
``max_frame_bytes``): a peer that sends a larger frame is disconnected by
ZeroMQ before the frame is buffered (counted in ``disconnects``; ZeroMQ
reconnects honest peers by itself). :func:`frame_cap` sizes the cap from the
largest legitimate message: an actor's transitions message of ``send_every``
transitions (the transition layout's bytes, plus one episode's stats) or the
learner's weights message, whichever is larger, times two, plus 64 KiB for
msgpack's framing. ``max_frame_bytes=0`` keeps :data:`DEFAULT_FRAME_CAP`.

Sockets (the learner binds, actors connect, so any number of actors can join):

* transitions: actor PUSH -> learner PULL (``transitions_port``);
* weights: learner PUB -> actor SUB (``weights_port``), conflated so an actor
  only ever holds the newest weights; the learner republishes periodically, so
  an actor that (re)connects late gets weights within one period.

Queues are bounded at both ends: ZeroMQ high-water marks, a fixed-size outbox
on the actor (oldest dropped and counted when the learner is away) and
``immediate`` so nothing piles up on a dead connection. ZeroMQ reconnects by
itself, so either side can restart. Delivery is at most once: messages already
handed to a connection that then dies (the learner crashed mid-send) are lost,
which costs a few transitions, never correctness.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
import numpy as np
import zmq

log = logging.getLogger(__name__)

TAG_BYTES = 32
_ND_EXT = 1
TOKEN_ENV = "FLYWHEEL_RL_TOKEN"


class AuthError(ValueError):
    """A message whose HMAC tag does not verify."""


@dataclass
class TransportConfig:
    host: str = "127.0.0.1"  # the learner's address (actors connect to it)
    bind_host: str = "127.0.0.1"  # where the learner binds; 0.0.0.0 to accept remote actors
    transitions_port: int = 5555
    weights_port: int = 5556
    token: str = ""  # shared secret; empty -> read $FLYWHEEL_RL_TOKEN
    queue_size: int = 64  # messages held at each end (hwm / outbox)
    weights_period_s: float = 5.0  # learner republishes weights this often
    replay_window_s: float = 300.0  # frames stamped further from the receiver's clock are refused (0: off)
    max_frame_bytes: int = 0  # ZeroMQ MAXMSGSIZE of receiving sockets; 0: DEFAULT_FRAME_CAP (see frame_cap)
    send_every: int = 50  # transitions per actor message (the flywheel-rl learner sizes its frame cap from it)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` just now (for local runs and tests: another process may
    take one before the endpoint binds it)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def resolve_token(token: str) -> bytes:
    t = token or os.environ.get(TOKEN_ENV, "")
    if not t:
        raise ValueError(
            f"no transport token: set transport.token=... or the {TOKEN_ENV} environment variable "
            "to the same secret on the learner and every actor"
        )
    return t.encode()


# ----------------------------------------------------------------- encoding
def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("object arrays cannot be sent (no pickle on the wire)")
        head = msgpack.packb([obj.dtype.str, list(obj.shape)])
        return msgpack.ExtType(_ND_EXT, head + np.ascontiguousarray(obj).tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} (send numpy arrays, numbers, str, bytes, lists, dicts)")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _ND_EXT:
        return msgpack.ExtType(code, data)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    dtype, shape = next(unpacker)
    offset = unpacker.tell()
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise ValueError("object arrays are refused")
    return np.frombuffer(data, dtype=dt, offset=offset).reshape(shape).copy()


def encode(msg: Mapping[str, Any], key: bytes) -> bytes:
    payload = msgpack.packb(msg, default=_default, use_bin_type=True)
    return hmac.new(key, payload, hashlib.sha256).digest() + payload


def decode(frame: bytes, key: bytes) -> dict[str, Any]:
    if len(frame) < TAG_BYTES:
        raise AuthError("message shorter than its HMAC tag")
    tag, payload = frame[:TAG_BYTES], frame[TAG_BYTES:]
    if not hmac.compare_digest(tag, hmac.new(key, payload, hashlib.sha256).digest()):
        raise AuthError("HMAC tag does not verify (wrong token?)")
    return msgpack.unpackb(payload, ext_hook=_ext_hook, raw=False, strict_map_key=False)


class ReplayError(ValueError):
    """An authentic message sent again: an old counter, an older session, a stale or future stamp."""


class MalformedError(ValueError):
    """An authentic message that is not one the receiver can use (missing fields, wrong types)."""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    """A finite float, or an int a float holds exactly (a huge int would overflow ``float()`` downstream)."""
    return (isinstance(x, float) and bool(np.isfinite(x))) or (_is_int(x) and abs(x) <= 2**53)


class _ReplayGuard:
    """Per sender: the newest session seen, ordered by (epoch, session id), and its highest counter."""

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_ns = int(window_s * 1e9)
        self._last: dict[str, tuple[tuple[int, str], int]] = {}

    def check(self, sender: str, msg: Mapping[str, Any], counter_key: str, strict: bool,
              now_ns: int | None = None) -> None:
        session, epoch, sent, counter = (msg.get(k) for k in ("session", "epoch", "sent", counter_key))
        if not (isinstance(session, str) and _is_int(epoch) and _is_int(sent) and _is_int(counter)):
            raise MalformedError(f"{sender or 'sender'}: message without session, epoch, sent and {counter_key}")
        now = time.time_ns() if now_ns is None else now_ns
        if self.window_ns > 0 and abs(now - sent) > self.window_ns:
            raise ReplayError(f"{sender}: message stamped {(now - sent) / 1e9:+.1f} s from now, outside the "
                              f"{self.window_ns / 1e9:g} s window (a replay, or clocks apart)")
        key = (epoch, session)
        cur = self._last.get(sender)
        if cur is not None and key < cur[0]:
            raise ReplayError(f"{sender}: session {session} (started {epoch}) is older than the newest seen, "
                              f"{cur[0][1]} (started {cur[0][0]})")
        if cur is not None and key == cur[0] and (counter < cur[1] or (strict and counter == cur[1])):
            raise ReplayError(f"{sender}: {counter_key} {counter} after {cur[1]} in session {session}")
        self._last[sender] = (key, counter)


_EPISODE_FIELDS = {"episode": int, "length": int, "env_steps": int, "return": float,
                   "intervention_rate": float, "success": bool}
_MAX_EXTRA = 16


def check_transitions(msg: Mapping[str, Any]) -> None:
    """Raise :class:`MalformedError` unless ``msg`` is a usable transitions message.

    ``batch``: a non-empty map of names to numeric or bool arrays sharing a leading length >= 1,
    floats finite; ``episodes`` (optional): a list of per-episode stats with numeric fields.
    """
    if msg.get("type") != "transitions":
        raise MalformedError(f"unknown message type {msg.get('type')!r} (expected 'transitions')")
    batch = msg.get("batch")
    if not isinstance(batch, dict) or not batch:
        raise MalformedError(f"'batch' must be a non-empty map of arrays, got {type(batch).__name__}")
    lengths = set()
    for k, v in batch.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray) or v.dtype.kind not in "biuf" or v.ndim < 1:
            raise MalformedError(f"batch[{k!r}] must be a numeric array with a batch axis, got "
                                 f"{type(v).__name__}{getattr(v, 'shape', '')}")
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise MalformedError(f"batch[{k!r}] holds NaN or Inf")
        lengths.add(v.shape[0])
    if len(lengths) != 1 or 0 in lengths:
        raise MalformedError(f"batch arrays disagree on (or lack) a length: {sorted(lengths)}")
    episodes = msg.get("episodes", [])
    if not isinstance(episodes, list):
        raise MalformedError(f"'episodes' must be a list, got {type(episodes).__name__}")
    for st in episodes:
        if not isinstance(st, dict):
            raise MalformedError(f"an episode's stats must be a map, got {type(st).__name__}")
        for f, t in _EPISODE_FIELDS.items():
            v = st.get(f)
            ok = isinstance(v, bool) if t is bool else (_is_int(v) or (t is float and isinstance(v, float)))
            if not ok or (isinstance(v, float) and not np.isfinite(v)):
                raise MalformedError(f"episode stats field {f!r}: expected a finite {t.__name__}, got {v!r}")
        extra = st.get("extra", {})  # per-episode diagnostics (EpisodeStats.extra): a few named numbers
        if not isinstance(extra, dict) or len(extra) > _MAX_EXTRA or not all(
                isinstance(k, str) and len(k) <= 64 and _is_number(v) for k, v in extra.items()):
            raise MalformedError(f"episode stats field 'extra': expected at most {_MAX_EXTRA} named finite numbers, "
                                 f"got {str(extra)[:120]}")


def check_weights(msg: Mapping[str, Any]) -> None:
    if msg.get("type") != "weights" or not isinstance(msg.get("data"), bytes) or not _is_int(msg.get("version")):
        raise MalformedError("a weights message needs type='weights', bytes 'data' and an int 'version'")


DEFAULT_FRAME_CAP = 64 << 20  # bytes; what max_frame_bytes=0 means
CLOSE_LINGER_MS = 2000  # how long an actor's close waits for messages already accepted to reach the learner


def frame_cap(layout: Mapping[str, tuple[tuple[int, ...], str]], send_every: int, weights_bytes: int) -> int:
    """The per-frame size cap from the largest legitimate message (see the module docstring).

    ``layout``: the transition layout (:func:`flywheel.rl.buffers.transition_layout`), ``send_every``:
    transitions per actor message, ``weights_bytes``: the size of the serialised policy weights.
    """
    row = sum(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize for s, d in layout.values())
    return 2 * max(int(send_every) * row, int(weights_bytes)) + (64 << 10)


# ------------------------------------------------------------------ endpoints
_E = TypeVar("_E", bound="_Receiver")


class _Receiver:
    """What both ends share: the key, the replay guard, the refusal counters, a size-capped socket, and the
    life cycle (``with endpoint:`` connects it unless connected, and closes it)."""

    def __init__(self, cfg: TransportConfig) -> None:
        self.cfg = cfg
        self._key = resolve_token(cfg.token)
        self._replay = _ReplayGuard(cfg.replay_window_s)
        self._epoch = time.time_ns()
        self._session = os.urandom(8).hex()
        self._monitor: zmq.Socket | None = None
        self._ctx: zmq.Context | None = None
        self.forged = self.replayed = self.malformed = self.disconnects = 0

    def connect(self: _E) -> _E:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _E) -> _E:
        return self.connect() if self._ctx is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def rejected(self) -> int:
        """Every frame refused: forged, replayed or malformed (oversized ones cost a connection instead)."""
        return self.forged + self.replayed + self.malformed

    @property
    def counters(self) -> dict[str, int]:
        return {"forged": self.forged, "replayed": self.replayed, "malformed": self.malformed,
                "disconnects": self.disconnects, "rejected": self.rejected}

    def _cap(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.MAXMSGSIZE, int(self.cfg.max_frame_bytes or DEFAULT_FRAME_CAP))
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def _count_disconnects(self) -> None:
        while self._monitor is not None and self._monitor.poll(0):
            self._monitor.recv_multipart()
            self.disconnects += 1
            log.info("a transport peer was disconnected (it went away, or sent a frame over %d bytes)",
                     self.cfg.max_frame_bytes or DEFAULT_FRAME_CAP)

    def _close_zmq(self, monitored: zmq.Socket | None, sockets: tuple[zmq.Socket | None, ...]) -> None:
        """Close the disconnect monitor (of the ``monitored`` socket), then ``sockets``, then the context."""
        if self._monitor is not None:
            if monitored is not None:
                monitored.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        for s in sockets:
            if s is not None:
                s.close(0)
        if self._ctx is not None:
            self._ctx.term()
        self._ctx = None

    def _stamp(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        return {**msg, "session": self._session, "epoch": self._epoch, "sent": time.time_ns()}

    def _accept(self, frame: bytes, sender_key: str, counter_key: str, strict: bool, check: Any) -> Any:
        """The decoded message, or None (counted and logged) for a refused frame; never raises."""
        try:
            msg = decode(frame, self._key)
        except AuthError as e:
            self.forged += 1
            log.warning("refused a forged transport frame: %s", e)
            return None
        except Exception as e:  # noqa: BLE001 - signed but undecodable: refuse, never die
            self.malformed += 1
            log.warning("refused a signed transport frame that does not decode: %s", e)
            return None
        try:
            if not isinstance(msg, dict):
                raise MalformedError(f"a message must be a map, got {type(msg).__name__}")
            sender = msg.get(sender_key, "")
            if not isinstance(sender, str):
                raise MalformedError(f"{sender_key!r} must be a string")
            check(msg)  # first: a malformed message leaves the replay state alone
            self._replay.check(sender, msg, counter_key, strict)
        except ReplayError as e:
            self.replayed += 1
            log.warning("refused a replayed transport message: %s", e)
            return None
        except Exception as e:  # noqa: BLE001
            self.malformed += 1
            log.warning("refused a malformed transport message: %s", e)
            return None
        return msg


class LearnerEndpoint(_Receiver):
    """The learner's side: receives transition messages, publishes weights."""

    def __init__(self, cfg: TransportConfig):
        super().__init__(cfg)
        self._pull: zmq.Socket | None = None
        self._pub: zmq.Socket | None = None
        self.received = 0

    @property
    def session(self) -> str:
        return self._session

    def connect(self) -> LearnerEndpoint:
        self._ctx = zmq.Context()
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, self.cfg.queue_size)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._cap(self._pull)
        self._pull.bind(f"tcp://{self.cfg.bind_host}:{self.cfg.transitions_port}")
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, 2)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(f"tcp://{self.cfg.bind_host}:{self.cfg.weights_port}")
        return self

    def close(self) -> None:
        self._close_zmq(self._pull, (self._pull, self._pub))
        self._pull = self._pub = None

    def recv(self, timeout_ms: int = 0, max_messages: int = 1000) -> list[dict[str, Any]]:
        """Every usable message waiting (waits up to ``timeout_ms`` for the first); refused ones are counted."""
        if self._pull is None:
            raise RuntimeError("LearnerEndpoint.recv before connect()")
        out: list[dict[str, Any]] = []
        if self._pull.poll(timeout_ms):
            while len(out) < max_messages:
                try:
                    frame = self._pull.recv(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
                msg = self._accept(frame, "actor", "seq", True, check_transitions)
                if msg is not None:
                    out.append(msg)
                    self.received += 1
        self._count_disconnects()
        return out

    def refuse(self, msg: Mapping[str, Any], error: BaseException) -> None:
        """Count a delivered message the learner could not use after all (e.g. a field of the wrong shape)."""
        self.malformed += 1
        self.received -= 1
        log.warning("refused a transitions message from %s: %s", msg.get("actor", "?"), error)

    def publish_weights(self, version: int, weights: bytes) -> None:
        if self._pub is None:
            raise RuntimeError("LearnerEndpoint.publish_weights before connect()")
        try:
            self._pub.send(encode(self._stamp({"type": "weights", "version": int(version), "data": weights}),
                                  self._key), zmq.NOBLOCK)
        except zmq.Again:
            pass  # a slow subscriber: it gets the next period's weights


class ActorEndpoint(_Receiver):
    """An actor's side: sends transition messages (bounded outbox), receives the newest weights."""

    def __init__(self, cfg: TransportConfig, actor_id: str = "actor0"):
        super().__init__(cfg)
        self.actor_id = actor_id
        self._push: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None
        self.outbox: collections.deque[bytes] = collections.deque(maxlen=max(1, cfg.queue_size))
        self.dropped = 0
        self.sent = 0
        self._seq = 0

    def connect(self) -> ActorEndpoint:
        self._ctx = zmq.Context()
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, self.cfg.queue_size)
        self._push.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing on a connection that is not up
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.setsockopt(zmq.RECONNECT_IVL, 100)
        self._push.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self._push.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # notice a crashed learner within seconds
        self._push.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        self._push.connect(f"tcp://{self.cfg.host}:{self.cfg.transitions_port}")
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.CONFLATE, 1)  # keep only the newest weights
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.RECONNECT_IVL, 100)
        self._sub.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self._cap(self._sub)
        self._sub.connect(f"tcp://{self.cfg.host}:{self.cfg.weights_port}")
        return self

    def close(self) -> None:
        if self._push is not None:
            # deliver what ZMQ has accepted but not yet written (the end of a run): bounded, and IMMEDIATE
            # queued nothing on a link that is down, so a dead learner costs no wait
            self._push.close(linger=CLOSE_LINGER_MS)
        self._close_zmq(self._sub, (self._sub,))
        self._push = self._sub = None

    def send(self, msg: Mapping[str, Any]) -> None:
        """Queue a message (dropping the oldest if the outbox is full) and flush what the link takes."""
        if len(self.outbox) == self.outbox.maxlen:
            self.dropped += 1
        self._seq += 1
        self.outbox.append(encode(self._stamp({**msg, "actor": self.actor_id, "seq": self._seq}), self._key))
        self.flush()

    def flush(self) -> int:
        """Send queued messages until the link pushes back; returns how many went out."""
        if self._push is None:
            raise RuntimeError("ActorEndpoint.flush before connect()")
        n = 0
        while self.outbox:
            try:
                self._push.send(self.outbox[0], zmq.NOBLOCK)
            except zmq.Again:
                break
            self.outbox.popleft()
            n += 1
        self.sent += n
        return n

    def poll_weights(self, timeout_ms: int = 0) -> dict[str, Any] | None:
        """The newest usable weights message, or None (refused ones are counted)."""
        if self._sub is None:
            raise RuntimeError("ActorEndpoint.poll_weights before connect()")
        msg = None
        if self._sub.poll(timeout_ms):
            try:
                frame = self._sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                frame = None
            if frame is not None:
                # the learner republishes the same version periodically: equal versions are fine
                msg = self._accept(frame, "learner", "version", False, check_weights)
        self._count_disconnects()
        return msg
