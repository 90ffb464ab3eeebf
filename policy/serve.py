"""``policy-serve CKPT``: a project checkpoint behind openpi's websocket protocol.

Any client that speaks openpi-client's protocol (msgpack, numpy arrays as
``__ndarray__`` maps; see :mod:`policy.remote`) gets the checkpoint's action
chunks: on connect the server sends its metadata (the rig spec, the action
horizon and dimension, the observation keys it needs, the image codecs it
decodes); each request is one observation map (the rig spec's ``images/<cam>``
and ``state/...`` keys plus ``"instruction"``, or openpi's ``"prompt"``;
optional ``"prefix"`` (P, A) for real-time chunking) and each reply is
``{"actions": (H, A) float32, "server_timing": {...}}``. A request that is not
an observation (missing keys, wrong shapes or dtypes, NaN) gets a text frame
``bad request: <field>: <why>`` (openpi-client raises it as an error) and the
connection stays open; so does a failed inference. openpi's ``__ctrl__``
messages (episode start/end) are acknowledged.

Several clients are served at once: decoding and inference run in worker
threads, never on the event loop, and inference itself is serialised (one
model). ``GET /healthz`` answers ``OK``. The server binds to loopback by
default; bound beyond it, it refuses to start without an API key, which
clients then send as ``Authorization: Api-Key <key>`` (read from the
``POLICY_SERVE_API_KEY`` environment variable or ``--api-key-file``, never the
command line).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import http
import ipaddress
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from policy.remote import API_KEY_ENV, decode_jpeg, packb, unpackb
from rig.spec import PROPRIO_KEYS, RigSpec

log = logging.getLogger("policy.serve")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (see PolicyServer.port)
    api_key: str = ""  # required when host is not loopback
    workers: int = 4  # threads decoding requests (inference itself runs one at a time)
    max_message_mb: float = 64.0

    def validate(self) -> None:
        if not is_loopback(self.host) and not self.api_key:
            raise ValueError(f"host={self.host!r} is beyond loopback: set an API key ({API_KEY_ENV} or "
                             "--api-key-file), or bind to 127.0.0.1")
        if self.workers < 1:
            raise ValueError(f"workers={self.workers}: must be >= 1")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port={self.port}: must be in 0..65535")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestError(ValueError):
    """A request that is not a valid observation; the message names the field."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field


def check_request(req: Any, spec: RigSpec) -> tuple[dict[str, Any], np.ndarray | None]:
    """A decoded request -> (a spec observation with ``instruction``, prefix or None); else RequestError."""
    if not isinstance(req, Mapping):
        raise RequestError("request", f"expected a map of observation keys, got {type(req).__name__}")
    instruction = req.get("instruction", req.get("prompt"))
    if instruction is None:
        raise RequestError("instruction", "missing (a str; openpi clients send it as 'prompt')")
    if isinstance(instruction, bytes):
        instruction = instruction.decode("utf-8", "replace")
    if not isinstance(instruction, str):
        raise RequestError("instruction", f"expected a str, got {type(instruction).__name__}")
    specs = spec.observation_specs()
    need = [f"images/{c}" for c in spec.camera_names] + list(PROPRIO_KEYS)
    missing = [k for k in need if k not in req]
    if missing:
        raise RequestError(missing[0], f"missing (required keys missing: {missing})")
    obs: dict[str, Any] = {"instruction": instruction}
    for key, s in specs.items():
        if key not in req:
            continue
        v = req[key]
        if isinstance(v, (bytes, bytearray)) and key.startswith("images/"):
            try:
                v = decode_jpeg(bytes(v))
            except ValueError as e:
                raise RequestError(key, str(e)) from None
        if not isinstance(v, (np.ndarray, np.generic, list, tuple, int, float)):
            raise RequestError(key, f"expected an array, got {type(v).__name__}")
        a = np.asarray(v)
        if a.shape != tuple(s.shape):
            raise RequestError(key, f"expected shape {tuple(s.shape)}, got {a.shape}")
        if s.dtype == "uint8":
            if a.dtype != np.uint8:
                raise RequestError(key, f"expected uint8 (rgb8), got {a.dtype}")
        elif a.dtype.kind not in "fiub":
            raise RequestError(key, f"expected a numeric array, got {a.dtype}")
        else:
            a = a.astype(s.dtype, copy=False)
            if not np.all(np.isfinite(a)):
                raise RequestError(key, "contains NaN or Inf")
        obs[key] = a
    prefix = req.get("prefix")
    if prefix is not None:
        p = np.asarray(prefix)
        if p.dtype.kind not in "fi" or p.ndim != 2 or p.shape[1] != spec.action.dim:
            raise RequestError("prefix", f"expected (P, {spec.action.dim}) floats, got {p.shape} {p.dtype}")
        if len(p) > spec.action.chunk_horizon:
            raise RequestError("prefix", f"{len(p)} actions: more than the horizon {spec.action.chunk_horizon}")
        if not np.all(np.isfinite(p)):
            raise RequestError("prefix", "contains NaN or Inf")
        prefix = p.astype(np.float32)
    return obs, prefix


def metadata(policy: Any) -> dict[str, Any]:
    spec: RigSpec = policy.spec
    path = getattr(policy, "path", None)
    return {
        "server": "policy-serve", "protocol": "openpi",
        "checkpoint": str(path.name) if path is not None else "",
        "rig_spec": spec.to_dict(),
        "action_horizon": spec.action.chunk_horizon, "action_dim": spec.action.dim,
        "control_hz": spec.action.control_hz,
        "observation_keys": [f"images/{c}" for c in spec.camera_names] + list(PROPRIO_KEYS),
        "image_codecs": ["raw", "jpeg"], "supports_prefix": True,
        "device": str(getattr(policy, "device", "")),
    }


class PolicyServer:
    """Serves ``policy`` (anything with ``spec`` and ``infer(obs, prefix=None)``) over websockets.

    ``connect()`` binds and serves from a background thread (``port`` is then the bound port);
    ``close()`` stops; ``serve_forever()`` serves in the calling thread (the CLI).
    """

    def __init__(self, policy: Any, cfg: ServeConfig | None = None) -> None:
        self.cfg = cfg or ServeConfig()
        self.cfg.validate()
        self.policy = policy
        self.meta = metadata(policy)
        self.port = self.cfg.port
        self.requests = 0
        self.errors = 0
        self._infer_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    # -------------------------------------------------------------- life cycle
    def connect(self, timeout: float = 10.0) -> PolicyServer:
        self._thread = threading.Thread(target=self._run_thread, name="policy-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("policy-serve did not start")
        if self._failure is not None:
            raise self._failure
        return self

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10.0)
        self._thread = None

    def __enter__(self) -> PolicyServer:
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def serve_forever(self) -> None:
        asyncio.run(self._serve())

    def _run_thread(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to connect()
            self._failure = e
            self._ready.set()

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._pool = ThreadPoolExecutor(self.cfg.workers, thread_name_prefix="policy-serve")
        try:
            async with serve(self._handler, self.cfg.host, self.cfg.port, compression=None,
                             max_size=int(self.cfg.max_message_mb * 2**20),
                             process_request=self._process_request) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                log.info("policy-serve on ws://%s:%d (%s)", self.cfg.host, self.port, self.meta["checkpoint"])
                self._ready.set()
                await self._stop.wait()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- protocol
    def _process_request(self, connection: Any, request: Any) -> Any:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.cfg.api_key:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.cfg.api_key}".encode()):
                log.warning("refused %s: missing or wrong API key", connection.remote_address)
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong API key\n")
        return None

    async def _handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        log.info("client %s connected", ws.remote_address)
        await ws.send(packb(self.meta))
        loop = asyncio.get_running_loop()
        prev_total: float | None = None
        try:
            while True:
                raw = await ws.recv()
                t0 = time.monotonic()
                reply = await loop.run_in_executor(self._pool, self._handle, raw, prev_total)
                await ws.send(reply)
                prev_total = time.monotonic() - t0
        except ConnectionClosed:
            log.info("client %s disconnected", ws.remote_address)

    def _handle(self, raw: bytes | str, prev_total: float | None) -> bytes | str:
        """One request -> the reply frame (bytes, or text for an error). Runs in a worker thread."""
        t0 = time.monotonic()
        with self._count_lock:
            self.requests += 1
        try:
            if isinstance(raw, str):
                raise RequestError("request", "expected a binary msgpack frame, got text")
            try:
                req = unpackb(raw)
            except Exception as e:
                raise RequestError("request", f"not msgpack-numpy: {e}") from None
            if isinstance(req, Mapping) and "__ctrl__" in req:
                return packb({"__ack__": str(req["__ctrl__"])})
            obs, prefix = check_request(req, self.policy.spec)
        except RequestError as e:
            with self._count_lock:
                self.errors += 1
            return f"bad request: {e}"
        t1 = time.monotonic()
        with self._infer_lock:
            t2 = time.monotonic()
            try:
                out = self.policy.infer(obs, prefix=prefix) if prefix is not None else self.policy.infer(obs)
                actions = np.asarray(out["actions"], np.float32)
            except Exception as e:  # the server stays up; the client sees why
                with self._count_lock:
                    self.errors += 1
                log.exception("inference failed")
                return f"inference failed: {type(e).__name__}: {e}"
            t3 = time.monotonic()
        timing = {"decode_ms": (t1 - t0) * 1e3, "queue_ms": (t2 - t1) * 1e3, "infer_ms": (t3 - t2) * 1e3}
        if prev_total is not None:
            timing["prev_total_ms"] = prev_total * 1e3
        return packb({"actions": actions, "server_timing": timing})


# ---------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="policy-serve", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a policy checkpoint directory (either family)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (beyond loopback needs an API key)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="", help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--api-key-file", default="", help=f"a file holding the API key (else ${API_KEY_ENV})")
    p.add_argument("--workers", type=int, default=4, help="request-decoding threads")
    p.add_argument("--rig-spec", default="", help="the rig's spec.json: the checkpoint must match it")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    key = open(args.api_key_file).read().strip() if args.api_key_file else os.environ.get(API_KEY_ENV, "")
    cfg = ServeConfig(host=args.host, port=args.port, api_key=key, workers=args.workers)
    try:
        cfg.validate()
        import policy

        spec = RigSpec.from_json(open(args.rig_spec).read()) if args.rig_spec else None
        pol = policy.load(args.checkpoint, spec=spec, device=args.device or None, compile=args.compile)
        server = PolicyServer(pol, cfg)
    except (ValueError, OSError) as e:
        print(f"policy-serve: {e}", file=sys.stderr)
        return 2
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["PolicyServer", "RequestError", "ServeConfig", "check_request", "is_loopback", "main", "metadata"]
