"""The console's web app (Starlette) and its server (uvicorn in a thread of the node).

Routes (every ``/api`` route and the websocket need the session token; see :class:`Auth`):

* ``GET /``: the page (plain HTML/JS, no build step); ``/console.js``, ``/console.css``;
* ``GET /api/state``: the snapshot (:meth:`Backend.snapshot`) with the review queue;
* ``POST /api/action/<name>``: one of :data:`ACTIONS` (start, success, ... stop), anything else is 400;
* ``POST /api/instruction`` ``{"text": ...}``; ``POST /api/review/<index>`` ``{"verdict": "confirm"|"reject"}``;
* ``GET /api/curves``: the RL learner's curves (:mod:`apps.console.curves`), when it runs;
* ``GET /api/frame/<camera>[?full=1]``: the latest image as JPEG (policy resolution, or full);
  ``GET /api/review/<index>/frame/<camera>``: the last image of a queued episode;
* ``WS /ws?token=...``: the server pushes the state (JSON text, ``state_hz``) and the camera
  views (binary: a 2-byte big-endian header length, a JSON header ``{camera, seq, stamp, full}``,
  then the JPEG) at most ``frame_hz`` per camera; the page may send ``{"full": "<camera>"|null}``.

The work behind a request runs in worker threads (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

ACTIONS = ("start", "success", "failure", "reset", "abort", "take_over", "hand_back", "hold", "release", "stop")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATIC = Path(__file__).parent / "static"
MAX_BODY = 16_384  # bytes of a JSON request body


class Backend(Protocol):
    """What the web app needs from the console node (a fake in unit tests)."""

    cameras: list[str]

    def snapshot(self) -> dict[str, Any]: ...
    def act(self, name: str) -> tuple[bool, str]: ...
    def instruct(self, text: str) -> tuple[bool, str]: ...
    def frame(self, camera: str, full: bool) -> tuple[int, float, bytes] | None: ...
    def review_items(self) -> dict[str, Any]: ...
    def review(self, index: int, verdict: str) -> tuple[bool, str]: ...
    def review_frame(self, index: int, camera: str) -> bytes | None: ...
    def curves(self) -> dict[str, Any]: ...


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


class Auth:
    """The session token, and which requests must show it.

    Every API call and the websocket carry the token (``X-Console-Token`` header on HTTP; the
    ``token`` query on the websocket and on image GETs, which cannot set headers). POSTs take
    the header only, so a cross-site form cannot forge one. On a loopback bind the page embeds
    the token and only loopback ``Host`` names are served (no DNS rebinding); bound wider, the
    page itself needs ``?token=``.
    """

    def __init__(self, token: str, host: str) -> None:
        if not token:
            raise ValueError("token: the console needs a session token")
        self.token = token
        self.loopback = is_loopback(host)

    def ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def host_ok(self, host_header: str | None) -> bool:
        if not self.loopback:
            return True
        h = host_header or ""
        host = h[1:].split("]", 1)[0] if h.startswith("[") else h.rsplit(":", 1)[0]
        return is_loopback(host)

    def origin_ok(self, origin: str | None, host_header: str | None) -> bool:
        """A browser's Origin must be this server (absent: not a browser, the token decides)."""
        if origin is None:
            return True
        return origin.split("://", 1)[-1] == (host_header or "")


def _refuse(status: int, why: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": why}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ValueError(f"request body of {len(body)} bytes: at most {MAX_BODY}")
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise ValueError("request body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("request body must be a JSON object")
    return data


def make_app(backend: Backend, auth: Auth, frame_hz: float = 10.0, state_hz: float = 5.0,
             stopping: threading.Event | None = None) -> Starlette:
    stopping = stopping or threading.Event()

    def guard(fn: Callable[[Request], Any], header_only: bool = False) -> Callable[[Request], Any]:
        async def call(request: Request) -> Response:
            if not auth.host_ok(request.headers.get("host")):
                return _refuse(403, "this console serves loopback host names only")
            if not auth.origin_ok(request.headers.get("origin"), request.headers.get("host")):
                return _refuse(403, "cross-origin request refused")
            given = request.headers.get("x-console-token")
            if given is None and not header_only:
                given = request.query_params.get("token")
            if not auth.ok(given):
                return _refuse(401, "missing or wrong console token (X-Console-Token header)")
            try:
                return await fn(request)
            except ValueError as e:
                return _refuse(400, str(e))
            except LookupError as e:
                return _refuse(404, str(e))

        return call

    async def page(request: Request) -> Response:
        if not auth.host_ok(request.headers.get("host")):
            return _refuse(403, "this console serves loopback host names only")
        if not auth.loopback and not auth.ok(request.query_params.get("token")):
            return HTMLResponse("<h1>401</h1><p>open the console's URL with its <code>?token=...</code></p>", 401)
        html = (STATIC / "index.html").read_text().replace("{{TOKEN}}", auth.token)
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ("console.js", "console.css"):
            return _refuse(404, f"no static file {name!r}")
        return FileResponse(STATIC / name)

    async def state(request: Request) -> Response:
        snap = await asyncio.to_thread(backend.snapshot)
        return JSONResponse({**snap, "review": await asyncio.to_thread(backend.review_items)})

    async def action(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ACTIONS:
            return _refuse(400, f"unknown action {name[:40]!r}: one of {list(ACTIONS)}")
        ok, msg = await asyncio.to_thread(backend.act, name)
        return JSONResponse({"ok": ok, "message": msg}, status_code=200 if ok else 409)

    async def instruction(request: Request) -> Response:
        text = (await _json_body(request)).get("text")
        if not isinstance(text, str):
            raise ValueError("instruction: give {\"text\": \"...\"}")
        ok, msg = await asyncio.to_thread(backend.instruct, text)
        return JSONResponse({"ok": ok, "message": msg}, status_code=200 if ok else 400)

    async def review(request: Request) -> Response:
        try:
            index = int(request.path_params["index"])
        except ValueError:
            raise ValueError("review: the episode index must be an integer") from None
        verdict = (await _json_body(request)).get("verdict")
        if verdict not in ("confirm", "reject"):
            raise ValueError(f"verdict {str(verdict)[:40]!r}: confirm or reject")
        ok, msg = await asyncio.to_thread(backend.review, index, verdict)
        return JSONResponse({"ok": ok, "message": msg}, status_code=200 if ok else 409)

    async def frame(request: Request) -> Response:
        cam = request.path_params["camera"]
        if cam not in backend.cameras:
            raise LookupError(f"no camera {cam[:40]!r}: {backend.cameras}")
        got = await asyncio.to_thread(backend.frame, cam, request.query_params.get("full") == "1")
        if got is None:
            raise LookupError(f"no image from camera {cam!r} yet")
        return Response(got[2], media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def review_frame(request: Request) -> Response:
        cam = request.path_params["camera"]
        if cam not in backend.cameras:
            raise LookupError(f"no camera {cam[:40]!r}: {backend.cameras}")
        jpg = await asyncio.to_thread(backend.review_frame, int(request.path_params["index"]), cam)
        if jpg is None:
            raise LookupError("no such image in the store")
        return Response(jpg, media_type="image/jpeg")

    async def curves(request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(backend.curves))

    async def ws(websocket: WebSocket) -> None:
        h = websocket.headers
        if not (auth.host_ok(h.get("host")) and auth.origin_ok(h.get("origin"), h.get("host"))
                and auth.ok(websocket.query_params.get("token"))):
            await websocket.close(code=4401)
            return
        await websocket.accept()
        await stream(websocket, backend, frame_hz, state_hz, stopping)

    routes = [
        Route("/", page),
        Route("/{name:str}", static),
        Route("/api/state", guard(state)),
        Route("/api/action/{name:str}", guard(action, header_only=True), methods=["POST"]),
        Route("/api/instruction", guard(instruction, header_only=True), methods=["POST"]),
        Route("/api/review/{index:str}", guard(review, header_only=True), methods=["POST"]),
        Route("/api/frame/{camera:str}", guard(frame)),
        Route("/api/curves", guard(curves)),
        Route("/api/review/{index:int}/frame/{camera:str}", guard(review_frame)),
        WebSocketRoute("/ws", ws),
    ]
    return Starlette(routes=routes)


async def stream(websocket: WebSocket, backend: Backend, frame_hz: float, state_hz: float,
                 stopping: threading.Event) -> None:
    """Push state and frames to one page until it goes away; a slow page only slows itself."""
    full: dict[str, Any] = {"camera": None}
    sent: dict[str, int] = {}

    async def listen() -> None:
        while True:
            msg = await websocket.receive_text()
            try:
                d = json.loads(msg)
            except ValueError:
                continue
            cam = d.get("full") if isinstance(d, dict) else None
            full["camera"] = cam if cam in backend.cameras else None
            sent.pop(str(cam), None)

    listener = asyncio.create_task(listen())
    next_state = 0.0
    try:
        while not stopping.is_set() and not listener.done():
            now = time.monotonic()
            if now >= next_state:
                next_state = now + 1.0 / state_hz
                snap = await asyncio.to_thread(backend.snapshot)
                snap["review"] = await asyncio.to_thread(backend.review_items)
                await websocket.send_text(json.dumps({"type": "state", **snap}))
            for cam in backend.cameras:
                is_full = full["camera"] == cam
                got = await asyncio.to_thread(backend.frame, cam, is_full)
                if got is None or sent.get(cam) == got[0]:
                    continue
                sent[cam] = got[0]
                head = json.dumps({"camera": cam, "seq": got[0], "stamp": got[1], "full": is_full,
                                   "sent": time.time()}).encode()
                await websocket.send_bytes(len(head).to_bytes(2, "big") + head + got[2])
            await asyncio.sleep(1.0 / frame_hz)
    except (WebSocketDisconnect, RuntimeError, OSError):  # the page closed or the connection broke
        pass
    finally:
        listener.cancel()


class WebServer:
    """uvicorn serving ``app`` from a thread: :meth:`start` binds (``port`` 0: any free port), :meth:`stop`."""

    def __init__(self, app: Starlette, host: str, port: int, stopping: threading.Event | None = None) -> None:
        self.app, self.host, self.port = app, host, port
        self.stopping = stopping or threading.Event()
        self.server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> WebServer:
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family, reuse_port=False)
        self.port = sock.getsockname()[1]
        cfg = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1,
                             ws_max_size=MAX_BODY, access_log=False)
        self.server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                        name="console-web", daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise RuntimeError(f"the console's web server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
