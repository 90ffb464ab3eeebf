"""Actor <-> learner transport: ZeroMQ + msgpack, HMAC-authenticated, bounded, no pickle.

Wire format: one ZeroMQ frame = 32-byte HMAC-SHA256 tag ++ msgpack payload. The
tag covers the payload and is keyed with the shared token, so a peer without the
token can neither inject transitions nor push weights; a message whose tag does
not verify is dropped and counted (``rejected``). numpy arrays travel as raw
bytes plus dtype and shape (msgpack ext type 1); object arrays are refused.

Replays are refused too. Every sender draws a random ``session`` id when it
connects and numbers its messages: an actor's transition messages carry a
``seq`` that must rise within its session, and the learner's weights carry a
``version`` that must not fall within its session; a session once superseded
by a newer one from the same sender is refused for good. So a recorded,
authentic frame sent again (by a man in the middle, or a confused proxy) is
dropped and counted (``replayed``) instead of duplicating transitions or
rolling an actor back to old weights.

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    """An authentic message sent again: an old sequence number, or a superseded session."""


class _ReplayGuard:
    """Per sender: the current session and the highest counter seen in it; retired sessions."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, int]] = {}
        self._retired: set[tuple[str, str]] = set()

    def check(self, sender: str, session: Any, counter: Any, strict: bool) -> None:
        if not isinstance(session, str) or not isinstance(counter, int):
            raise ValueError(f"{sender or 'sender'}: message without a session and counter")
        if (sender, session) in self._retired:
            raise ReplayError(f"{sender}: session {session} was superseded (two senders with one name?)")
        cur = self._last.get(sender)
        if cur is not None and cur[0] == session:
            if counter < cur[1] or (strict and counter == cur[1]):
                raise ReplayError(f"{sender}: counter {counter} after {cur[1]} in session {session}")
        elif cur is not None:
            self._retired.add((sender, cur[0]))  # a restarted sender: its old session is over
        self._last[sender] = (session, counter)


# ------------------------------------------------------------------ endpoints
class LearnerEndpoint:
    """The learner's side: receives transition messages, publishes weights."""

    def __init__(self, cfg: TransportConfig):
        self.cfg = cfg
        self._key = resolve_token(cfg.token)
        self._ctx: zmq.Context | None = None
        self._pull: zmq.Socket | None = None
        self._pub: zmq.Socket | None = None
        self.rejected = 0
        self.replayed = 0
        self.received = 0
        self.session = os.urandom(8).hex()
        self._replay = _ReplayGuard()

    def connect(self) -> LearnerEndpoint:
        self._ctx = zmq.Context()
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, self.cfg.queue_size)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.bind(f"tcp://{self.cfg.bind_host}:{self.cfg.transitions_port}")
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, 2)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(f"tcp://{self.cfg.bind_host}:{self.cfg.weights_port}")
        return self

    def close(self) -> None:
        for s in (self._pull, self._pub):
            if s is not None:
                s.close(0)
        if self._ctx is not None:
            self._ctx.term()
        self._ctx = self._pull = self._pub = None

    def __enter__(self) -> LearnerEndpoint:
        return self.connect() if self._ctx is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def recv(self, timeout_ms: int = 0, max_messages: int = 1000) -> list[dict[str, Any]]:
        """Every message waiting (waits up to ``timeout_ms`` for the first); bad ones are dropped."""
        if self._pull is None:
            raise RuntimeError("LearnerEndpoint.recv before connect()")
        out: list[dict[str, Any]] = []
        if not self._pull.poll(timeout_ms):
            return out
        while len(out) < max_messages:
            try:
                frame = self._pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                msg = decode(frame, self._key)
                self._replay.check(str(msg.get("actor", "")), msg.get("session"), msg.get("seq"), strict=True)
            except ReplayError as e:
                self.replayed += 1
                self.rejected += 1
                log.warning("dropped a replayed transport message: %s", e)
                continue
            except Exception as e:  # noqa: BLE001 - any bad frame is dropped, never fatal
                self.rejected += 1
                log.warning("dropped a transport message: %s", e)
                continue
            out.append(msg)
            self.received += 1
        return out

    def publish_weights(self, version: int, weights: bytes) -> None:
        if self._pub is None:
            raise RuntimeError("LearnerEndpoint.publish_weights before connect()")
        try:
            self._pub.send(encode({"type": "weights", "session": self.session, "version": int(version),
                                   "data": weights}, self._key), zmq.NOBLOCK)
        except zmq.Again:
            pass  # a slow subscriber: it gets the next period's weights


class ActorEndpoint:
    """An actor's side: sends transition messages (bounded outbox), receives the newest weights."""

    def __init__(self, cfg: TransportConfig, actor_id: str = "actor0"):
        self.cfg = cfg
        self.actor_id = actor_id
        self._key = resolve_token(cfg.token)
        self._ctx: zmq.Context | None = None
        self._push: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None
        self.outbox: collections.deque[bytes] = collections.deque(maxlen=max(1, cfg.queue_size))
        self.dropped = 0
        self.rejected = 0
        self.replayed = 0
        self.sent = 0
        self._session = os.urandom(8).hex()
        self._seq = 0
        self._replay = _ReplayGuard()

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
        self._sub.connect(f"tcp://{self.cfg.host}:{self.cfg.weights_port}")
        return self

    def close(self) -> None:
        for s in (self._push, self._sub):
            if s is not None:
                s.close(0)
        if self._ctx is not None:
            self._ctx.term()
        self._ctx = self._push = self._sub = None

    def __enter__(self) -> ActorEndpoint:
        return self.connect() if self._ctx is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send(self, msg: Mapping[str, Any]) -> None:
        """Queue a message (dropping the oldest if the outbox is full) and flush what the link takes."""
        if len(self.outbox) == self.outbox.maxlen:
            self.dropped += 1
        self._seq += 1
        self.outbox.append(encode({**msg, "actor": self.actor_id, "session": self._session, "seq": self._seq},
                                  self._key))
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
        """The newest authentic weights message, or None."""
        if self._sub is None:
            raise RuntimeError("ActorEndpoint.poll_weights before connect()")
        if not self._sub.poll(timeout_ms):
            return None
        try:
            msg = decode(self._sub.recv(zmq.NOBLOCK), self._key)
            # the learner republishes the same version periodically: equal versions are fine
            self._replay.check("learner", msg.get("session"), msg.get("version"), strict=False)
            return msg
        except zmq.Again:
            return None
        except ReplayError as e:
            self.replayed += 1
            self.rejected += 1
            log.warning("dropped a replayed weights message: %s", e)
            return None
        except Exception as e:  # noqa: BLE001
            self.rejected += 1
            log.warning("dropped a weights message: %s", e)
            return None
