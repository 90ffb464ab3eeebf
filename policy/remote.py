"""``RemotePolicy``: a policy served over openpi's websocket protocol, with a local ``Policy``'s ``infer``.

The wire format is openpi-client's: every message is msgpack; numpy arrays travel
as maps ``{b"__ndarray__": True, b"data": bytes, b"dtype": str, b"shape": tuple}``
and numpy scalars as ``{b"__npgeneric__": True, b"data": item, b"dtype": str}``
(:func:`packb` / :func:`unpackb` write and read exactly that). On connect the
server sends its metadata (a msgpack map); each request is an observation map;
each reply is a map with ``"actions"`` and ``"server_timing"``, or a text frame
carrying an error. The API key travels as ``Authorization: Api-Key <key>``.

``RemotePolicy`` talks to ``policy-serve`` (this project's server, which sends its
rig spec in the metadata and accepts a real-time-chunking ``prefix``) or to an
openpi server (pi0, pi0.5 on the lab's GPU box). A :class:`RemoteMapping` renames
observation keys for servers whose keys differ, resizes images (with padding, as
openpi's ``resize_with_pad``) and maps the returned action columns back to the
rig's action; :data:`DROID` is openpi's DROID example. Images can travel as JPEG
(``image_codec="jpeg"``) when the server says it decodes them (``policy-serve``
does; openpi servers do not, so the client then sends raw arrays).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from rig.spec import RigSpec

API_KEY_ENV = "POLICY_SERVE_API_KEY"


# ------------------------------------------------------------------ the codec
def _pack_array(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"unsupported dtype for the wire: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(),
                b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _unpack_array(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in ("V", "O", "c"):
            raise ValueError(f"unsupported dtype on the wire: {dtype}")
        return np.ndarray(buffer=obj[b"data"], dtype=dtype, shape=tuple(obj[b"shape"]))
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def packb(obj: Any) -> bytes:
    """msgpack with numpy arrays as openpi-client packs them."""
    return msgpack.packb(obj, default=_pack_array)


def unpackb(data: bytes) -> Any:
    """The inverse of :func:`packb` (arrays come back read-only, backed by the message)."""
    return msgpack.unpackb(data, object_hook=_unpack_array)


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not a decodable JPEG image")
    return img[..., ::-1].copy()


def resize_with_pad(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize keeping the aspect ratio, then pad with black to (height, width) (openpi's image_tools)."""
    import cv2

    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    ratio = max(w / width, h / height)
    nh, nw = int(h / ratio), int(w / ratio)
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.zeros((height, width, img.shape[2]), img.dtype)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top:top + nh, left:left + nw] = small
    return out


# ---------------------------------------------------------------- the mapping
@dataclass
class RemoteMapping:
    """How the rig's observation and action map onto a server whose keys differ.

    ``observation``: rig key (``images/<cam>``, ``state/...``, ``instruction``) -> wire key;
    only mapped keys are sent. ``affine``: rig key -> ``[scale, offset]`` applied before sending
    (e.g. the gripper width in m -> DROID's closed fraction). ``image_size``: ``[H, W]`` images are
    resized with padding to. ``action_columns``: for each rig action component, the column of the
    server's actions it comes from; ``action_scale``/``action_offset`` then map that value
    (``rig = wire * scale + offset``). ``horizon`` crops the returned chunk (0 keeps it).
    """

    observation: dict[str, str] = field(default_factory=dict)
    affine: dict[str, list[float]] = field(default_factory=dict)
    image_size: list[int] | None = None
    actions_key: str = "actions"
    action_columns: list[int] | None = None
    action_scale: list[float] | None = None
    action_offset: list[float] | None = None
    horizon: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RemoteMapping:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"remote mapping: unknown fields {unknown} (known: {sorted(names)})")
        return cls(**dict(d))

    @classmethod
    def load(cls, name_or_path: str) -> RemoteMapping | None:
        """``""`` (no mapping), a preset name (``droid``) or a YAML/JSON file."""
        if not name_or_path:
            return None
        if name_or_path in PRESETS:
            return PRESETS[name_or_path]
        p = Path(name_or_path)
        if not p.exists():
            raise FileNotFoundError(f"remote mapping {name_or_path!r}: neither a preset {list(PRESETS)} nor a file")
        if p.suffix == ".json":
            return cls.from_dict(json.loads(p.read_text()))
        import yaml

        return cls.from_dict(yaml.safe_load(p.read_text()) or {})

    def to_wire(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, wire in self.observation.items():
            if key not in obs:
                raise KeyError(f"remote mapping: the observation has no {key!r} (mapped to {wire!r})")
            v = obs[key]
            if key in self.affine:
                scale, offset = self.affine[key]
                v = np.asarray(v, np.float32) * np.float32(scale) + np.float32(offset)
            if key.startswith("images/") and self.image_size:
                v = resize_with_pad(np.asarray(v), *self.image_size)
            out[wire] = v
        return out

    def from_wire(self, actions: np.ndarray, dim: int) -> np.ndarray:
        a = np.asarray(actions, np.float32)
        if a.ndim == 1:
            a = a[None]
        if self.action_columns is not None:
            if max(self.action_columns) >= a.shape[-1]:
                raise ValueError(f"remote mapping: action_columns {self.action_columns} index past the "
                                 f"server's {a.shape[-1]} action columns")
            a = a[:, self.action_columns]
        if a.shape[-1] != dim:
            raise ValueError(f"remote actions have {a.shape[-1]} columns, the rig's action has {dim}: "
                             "set the mapping's action_columns")
        if self.action_scale is not None:
            a = a * np.asarray(self.action_scale, np.float32)
        if self.action_offset is not None:
            a = a + np.asarray(self.action_offset, np.float32)
        return a[: self.horizon] if self.horizon else a


# openpi's DROID example (examples/droid/main.py): two 224 px cameras, joint positions, the gripper as a
# closed fraction (0 open .. 1 closed) and "prompt". DROID checkpoints answer (10, 8) joint velocities +
# gripper position, not the rig's end-effector deltas: action_columns picks 7 columns so the chunk has the
# rig's shape, but driving the rig with it needs a checkpoint trained on the rig's action space (or a
# server-side transform); the preset is the worked example of the key mapping.
DROID = RemoteMapping(
    observation={
        "images/front": "observation/exterior_image_1_left",
        "images/wrist": "observation/wrist_image_left",
        "state/joint_pos": "observation/joint_position",
        "state/gripper_width": "observation/gripper_position",
        "instruction": "prompt",
    },
    affine={"state/gripper_width": [-12.5, 1.0]},  # 0.08 m open -> 0, closed -> 1
    image_size=[224, 224],
    action_columns=[0, 1, 2, 3, 4, 5, 7],
    action_scale=[1, 1, 1, 1, 1, 1, -2],
    action_offset=[0, 0, 0, 0, 0, 0, 1],  # closed fraction 0..1 -> rig gripper +1 (open) .. -1 (closed)
    horizon=8,
)
PRESETS: dict[str, RemoteMapping] = {"droid": DROID}


# ------------------------------------------------------------------ the client
class RemoteError(RuntimeError):
    """The server answered a request with an error (its text names the field)."""


class RemotePolicy:
    """``infer(obs, prefix=None) -> {"actions": (H, A) float32}`` on a websocket policy server.

    Life cycle: ``connect()`` (receives the server metadata) ... ``close()``, or ``with``.
    ``spec`` is the rig spec the actions mean; it defaults to the one ``policy-serve`` sends in
    its metadata (an openpi server sends none: then pass it).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = 8000, *, api_key: str | None = None,
        spec: RigSpec | None = None, mapping: RemoteMapping | None = None, image_codec: str = "raw",
        jpeg_quality: int = 90, timeout: float = 10.0,
    ) -> None:
        if image_codec not in ("raw", "jpeg"):
            raise ValueError(f"image_codec={image_codec!r}: choose raw or jpeg")
        self.uri = host if host.startswith(("ws://", "wss://")) else f"ws://{host}" + (f":{port}" if port else "")
        self.api_key = api_key
        self.spec: RigSpec | None = spec
        self.mapping = mapping
        self.image_codec = image_codec
        self.jpeg_quality = jpeg_quality
        self.timeout = timeout
        self.metadata: dict[str, Any] = {}
        self.device = f"remote {self.uri}"
        self.last_latency = float("nan")
        self.last_timing: dict[str, Any] = {}
        self._ws: Any = None
        self._lock = threading.Lock()
        self._jpeg = False
        self._prefix = False

    @classmethod
    def from_params(cls, p: Any, spec: RigSpec | None = None) -> RemotePolicy:
        """From policy-node's parameters (``host``, ``port``, ``remote_mapping``, ``image_codec``);
        the API key comes from ``$POLICY_SERVE_API_KEY``, never a parameter."""
        import os

        return cls(p.host, p.port, api_key=os.environ.get(API_KEY_ENV) or None, spec=spec,
                   mapping=RemoteMapping.load(p.remote_mapping), image_codec=p.image_codec)

    # ------------------------------------------------------------ life cycle
    def connect(self) -> RemotePolicy:
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        deadline = time.monotonic() + self.timeout
        while True:  # as openpi's client: wait for a server that is still starting (up to `timeout`)
            try:
                self._ws = connect(self.uri, compression=None, max_size=None, additional_headers=headers,
                                   open_timeout=self.timeout).__enter__()  # websockets >= 17.1 warns otherwise
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise ConnectionRefusedError(f"no policy server at {self.uri} after {self.timeout:g} s") from None
                time.sleep(0.5)
        self.metadata = unpackb(self._ws.recv(timeout=self.timeout))
        served = self.metadata.get("rig_spec") if isinstance(self.metadata, dict) else None
        if self.spec is None and served:
            self.spec = RigSpec.from_dict(served)
        elif self.spec is not None and served and self.mapping is None:
            from rig.spec import check_compatible

            check_compatible(self.spec, RigSpec.from_dict(served))
        if self.spec is None:
            self.close()
            raise ValueError(f"{self.uri} sends no rig_spec in its metadata (an openpi server): pass spec=")
        codecs = self.metadata.get("image_codecs", []) if isinstance(self.metadata, dict) else []
        self._jpeg = self.image_codec == "jpeg" and "jpeg" in codecs
        self._prefix = bool(self.metadata.get("supports_prefix")) if isinstance(self.metadata, dict) else False
        return self

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def _drop(self) -> None:
        """Forget a broken connection (a timed-out reply would otherwise answer the next request)."""
        try:
            self.close()
        except Exception:  # already broken
            self._ws = None

    def __enter__(self) -> RemotePolicy:
        return self.connect() if self._ws is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def horizon(self) -> int:
        assert self.spec is not None
        return self.spec.action.chunk_horizon

    # ------------------------------------------------------------- inference
    def _request(self, obs: Mapping[str, Any], prefix: np.ndarray | None) -> dict[str, Any]:
        req = self.mapping.to_wire(obs) if self.mapping else dict(obs)
        if self._jpeg:
            req = {k: (encode_jpeg(v, self.jpeg_quality) if _is_image(k, v) else v) for k, v in req.items()}
        if prefix is not None and len(prefix) and self._prefix:
            req["prefix"] = np.asarray(prefix, np.float32)
        return req

    def infer(self, obs: Mapping[str, Any], prefix: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if self._ws is None:
            self.connect()
        assert self.spec is not None
        t0 = time.perf_counter()
        data = packb(self._request(obs, prefix))
        with self._lock:
            try:
                self._ws.send(data)
                reply = self._ws.recv(timeout=self.timeout)
            except (OSError, TimeoutError, ConnectionError) as e:  # websockets' ConnectionClosed is neither
                self._drop()
                raise RemoteError(f"{self.uri}: {type(e).__name__}: {e} (reconnects on the next call)") from e
            except Exception as e:
                from websockets.exceptions import ConnectionClosed

                if not isinstance(e, ConnectionClosed):
                    raise
                self._drop()
                raise RemoteError(f"{self.uri}: connection closed ({e}); reconnects on the next call") from e
        if isinstance(reply, str):
            raise RemoteError(f"{self.uri}: {reply}")
        out = unpackb(reply)
        key = self.mapping.actions_key if self.mapping else "actions"
        if not isinstance(out, dict) or key not in out:
            raise RemoteError(f"{self.uri}: the reply has no {key!r}")
        actions = (self.mapping.from_wire(out[key], self.spec.action.dim) if self.mapping
                   else np.array(out[key], np.float32))
        self.last_timing = dict(out.get("server_timing", {}))
        self.last_latency = time.perf_counter() - t0
        return {"actions": actions}

    def warmup(self, obs: Mapping[str, Any], n: int = 2) -> None:
        for _ in range(n):
            self.infer(obs)


def _is_image(key: str, v: Any) -> bool:
    """An rgb8 image (whatever the server calls its key)."""
    return isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 3 and v.shape[-1] == 3


__all__ = ["DROID", "PRESETS", "RemoteError", "RemoteMapping", "RemotePolicy", "decode_jpeg", "encode_jpeg",
           "packb", "resize_with_pad", "unpackb"]
