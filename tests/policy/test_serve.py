"""policy-serve speaks openpi's websocket protocol: a client packing exactly as openpi-client does gets chunks."""

from __future__ import annotations

import functools
import threading
import urllib.request

import msgpack
import numpy as np
import pytest
import torch
from policy_helpers import observation, tiny_spec
from websockets.sync.client import connect

from policy.remote import DROID, RemoteError, RemoteMapping, RemotePolicy, packb, unpackb
from policy.serve import PolicyServer, ServeConfig, main
from rig.spec import RigSpec


# openpi-client's msgpack_numpy, written from its format (the real package pins numpy<2)
def _openpi_pack_array(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"Unsupported dtype: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _openpi_unpack_array(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


openpi_unpackb = functools.partial(msgpack.unpackb, object_hook=_openpi_unpack_array)


class OpenpiClient:
    """openpi-client's WebsocketClientPolicy, in the few lines that matter."""

    def __init__(self, port: int, api_key: str | None = None) -> None:
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self.ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, additional_headers=headers)
        self.ws.__enter__()  # websockets >= 17.1 wants connections used as context managers
        self.packer = msgpack.Packer(default=_openpi_pack_array)
        self.metadata = openpi_unpackb(self.ws.recv())

    def infer(self, obs):
        self.ws.send(self.packer.pack(obs))
        reply = self.ws.recv()
        if isinstance(reply, str):
            raise RuntimeError(f"Error in inference server:\n{reply}")
        return openpi_unpackb(reply)

    def close(self):
        self.ws.close()


class FakePolicy:
    """A policy whose chunk is a function of the observation; ``gate`` can hold inference."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.spec = tiny_spec()
        self.gate = gate
        self.entered = threading.Event()
        self.calls = 0

    def infer(self, obs, prefix=None):
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10.0)
        h, a = self.spec.action.chunk_horizon, self.spec.action.dim
        out = np.tile(np.asarray(obs["state/ee_pos"], np.float32)[0], (h, a))
        if prefix is not None:
            out[: len(prefix)] = prefix
        return {"actions": out}


@pytest.fixture(scope="module")
def checkpoint(tiny_backbones, tmp_path_factory):
    from policy.config import PolicyConfig
    from policy.model import VLA

    torch.manual_seed(0)
    cfg = PolicyConfig(backbone=str(tiny_backbones["smolvlm"]), hidden_dim=32, num_tokens=4)
    return VLA.from_backbone(cfg, tiny_spec()).save_pretrained(tmp_path_factory.mktemp("ck") / "policy")


def test_codec_is_byte_identical_to_openpi_clients():
    obs = observation(tiny_spec())
    obs["scalar"] = np.float32(0.5)
    assert packb(obs) == msgpack.Packer(default=_openpi_pack_array).pack(obs)
    back = unpackb(packb(obs))
    for k, v in obs.items():
        assert np.array_equal(back[k], v) if isinstance(v, np.ndarray) else back[k] == v
    assert back["images/front"].dtype == np.uint8 and back["scalar"].dtype == np.float32
    with pytest.raises(ValueError, match="dtype"):
        packb({"x": np.array([object()])})


def test_checkpoint_served_to_an_openpi_client_matches_in_process_inference(checkpoint):
    import policy

    local = policy.load(checkpoint, device="cpu")
    obs = observation(local.spec, seed=3)
    expected = local.infer(obs)["actions"]
    with PolicyServer(policy.load(checkpoint, device="cpu"), ServeConfig(port=0)) as server:
        client = OpenpiClient(server.port)
        meta = client.metadata
        assert meta["protocol"] == "openpi" and meta["action_horizon"] == local.horizon
        assert RigSpec.from_dict(meta["rig_spec"]) == local.spec
        wire = {k: v for k, v in obs.items() if k != "instruction"} | {"prompt": obs["instruction"]}
        reply = client.infer(wire)
        assert reply["actions"].dtype == np.float32 and reply["actions"].shape == expected.shape
        np.testing.assert_allclose(reply["actions"], expected, atol=1e-5)
        assert reply["server_timing"]["infer_ms"] > 0
        assert "prev_total_ms" in client.infer(wire)["server_timing"]  # as openpi: the previous round trip
        client.close()
        with RemotePolicy("127.0.0.1", server.port) as remote:  # the project's own client
            assert remote.spec == local.spec
            np.testing.assert_allclose(remote.infer(obs)["actions"], expected, atol=1e-5)
        with RemotePolicy("127.0.0.1", server.port, image_codec="jpeg", jpeg_quality=95) as remote:
            assert remote._jpeg
            assert remote.infer(obs)["actions"].shape == expected.shape


def test_several_clients_at_once_and_the_event_loop_never_waits_for_inference():
    gate = threading.Event()
    pol = FakePolicy(gate)
    with PolicyServer(pol, ServeConfig(port=0)) as server:
        clients = [OpenpiClient(server.port) for _ in range(4)]
        results: dict[int, list] = {i: [] for i in range(4)}

        def run(i):
            for j in range(3):
                obs = observation(pol.spec, seed=i)
                obs["state/ee_pos"] = np.full(3, 10 * i + j, np.float32)
                results[i].append((10 * i + j, clients[i].infer(obs)["actions"]))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        assert pol.entered.wait(10.0)  # one inference is now held inside the policy ...
        health = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
        assert health.status == 200 and health.read() == b"OK\n"  # ... and the server still answers
        fresh = OpenpiClient(server.port)  # ... and still accepts connections
        assert fresh.metadata["server"] == "policy-serve"
        gate.set()
        for t in threads:
            t.join(20.0)
        for i in range(4):
            assert [v for v, _ in results[i]] == [10 * i + j for j in range(3)]
            for v, actions in results[i]:
                assert np.all(actions == v)  # every client got the chunk of its own observation
        assert pol.calls == 12
        fresh.close()
        for c in clients:
            c.close()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o.pop("state/ee_quat"), "state/ee_quat"),
        (lambda o: o.pop("instruction"), "instruction"),
        (lambda o: o.__setitem__("images/front", np.zeros((8, 8, 3), np.uint8)), "images/front"),
        (lambda o: o.__setitem__("images/wrist", np.zeros((32, 32, 3), np.float32)), "images/wrist"),
        (lambda o: o.__setitem__("state/ee_pos", np.array([0.0, np.nan, 0.0], np.float32)), "state/ee_pos"),
        (lambda o: o.__setitem__("state/gripper_width", "wide"), "state/gripper_width"),
        (lambda o: o.__setitem__("prefix", np.zeros((2, 3), np.float32)), "prefix"),
        (lambda o: o.__setitem__("images/front", b"not a jpeg"), "images/front"),
    ],
)
def test_bad_requests_get_an_error_naming_the_field_and_the_server_stays_up(mutate, field):
    pol = FakePolicy()
    with PolicyServer(pol, ServeConfig(port=0)) as server:
        client = OpenpiClient(server.port)
        bad = observation(pol.spec)
        mutate(bad)
        with pytest.raises(RuntimeError, match=f"bad request: {field}"):
            client.infer(bad)
        client.ws.send(b"\xc1 not msgpack")
        assert client.ws.recv().startswith("bad request: request")
        assert client.infer(observation(pol.spec))["actions"].shape == (8, 7)  # same connection, still served
        assert pol.calls == 1


def test_inference_failures_are_reported_and_the_server_stays_up():
    pol = FakePolicy()
    pol.infer = lambda obs, prefix=None: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
    with PolicyServer(pol, ServeConfig(port=0)) as server, RemotePolicy("127.0.0.1", server.port) as remote:
        with pytest.raises(RemoteError, match="inference failed: RuntimeError: CUDA out of memory"):
            remote.infer(observation(pol.spec))
        with pytest.raises(RemoteError, match="inference failed"):
            remote.infer(observation(pol.spec))


def test_api_key_is_required_beyond_loopback_and_refuses_wrong_keys():
    with pytest.raises(ValueError, match="API key"):
        ServeConfig(host="0.0.0.0").validate()
    assert main(["/nonexistent", "--host", "0.0.0.0"]) == 2  # refused before loading anything
    from websockets.exceptions import InvalidStatus

    pol = FakePolicy()
    with PolicyServer(pol, ServeConfig(port=0, api_key="s3cret")) as server:
        for key in (None, "wrong"):
            with pytest.raises(InvalidStatus, match="401"):
                OpenpiClient(server.port, api_key=key)
        assert urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5).status == 200
        client = OpenpiClient(server.port, api_key="s3cret")
        assert client.infer(observation(pol.spec))["actions"].shape == (8, 7)
        client.close()
        assert pol.calls == 1


def test_prefix_travels_only_to_servers_that_take_it():
    pol = FakePolicy()
    with PolicyServer(pol, ServeConfig(port=0)) as server, RemotePolicy("127.0.0.1", server.port) as remote:
        prefix = np.full((3, 7), 0.25, np.float32)
        out = remote.infer(observation(pol.spec), prefix=prefix)["actions"]
        assert np.all(out[:3] == 0.25) and not np.any(out[3:] == 0.25)
        assert remote.last_timing["infer_ms"] >= 0 and remote.last_latency > 0


class OpenpiDroidServer:
    """An openpi server serving a DROID checkpoint: its own keys, no rig spec, (10, 8) actions."""

    def __init__(self) -> None:
        from websockets.sync.server import serve

        self.requests: list[dict] = []
        self.server = serve(self._handler, "127.0.0.1", 0, compression=None, max_size=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handler(self, ws):
        packer = msgpack.Packer(default=_openpi_pack_array)
        ws.send(packer.pack({}))
        for raw in ws:
            obs = openpi_unpackb(raw)
            self.requests.append(obs)
            actions = np.zeros((10, 8), np.float64)
            actions[:, :7] = obs["observation/joint_position"][0]
            actions[:, 7] = obs["observation/gripper_position"][0]
            ws.send(packer.pack({"actions": actions, "server_timing": {"infer_ms": 1.0}}))

    def close(self):
        self.server.shutdown()
        self.thread.join(5.0)


def test_droid_mapping_drives_an_openpi_server_with_its_own_keys():
    spec = tiny_spec()
    server = OpenpiDroidServer()
    try:
        with pytest.raises(ValueError, match="rig_spec"):
            RemotePolicy("127.0.0.1", server.port, mapping=DROID).connect()
        with RemotePolicy("127.0.0.1", server.port, spec=spec, mapping=DROID, image_codec="jpeg") as remote:
            obs = observation(spec)
            obs["state/joint_pos"] = np.full(7, 0.3, np.float32)
            obs["state/gripper_width"] = np.array([0.08], np.float32)  # open
            actions = remote.infer(obs)["actions"]
            assert not remote._jpeg  # an openpi server does not decode JPEG: images went raw
        sent = server.requests[0]
        assert set(sent) == {"observation/exterior_image_1_left", "observation/wrist_image_left",
                             "observation/joint_position", "observation/gripper_position", "prompt"}
        assert sent["observation/exterior_image_1_left"].shape == (224, 224, 3)
        assert sent["prompt"] == obs["instruction"]
        np.testing.assert_allclose(sent["observation/gripper_position"], [0.0], atol=1e-6)  # open -> 0
        assert actions.shape == (8, 7) and actions.dtype == np.float32
        np.testing.assert_allclose(actions[:, :6], 0.3, atol=1e-6)
        np.testing.assert_allclose(actions[:, 6], 1.0, atol=1e-6)  # open -> rig gripper +1
    finally:
        server.close()


def test_mapping_refuses_what_it_cannot_map(tmp_path):
    m = RemoteMapping(observation={"state/ee_pos": "pos"})
    with pytest.raises(KeyError, match="images/front"):
        RemoteMapping(observation={"images/front": "img"}).to_wire({"state/ee_pos": np.zeros(3)})
    with pytest.raises(ValueError, match="action_columns"):
        m.from_wire(np.zeros((4, 8)), 7)
    with pytest.raises(ValueError, match="unknown fields"):
        RemoteMapping.from_dict({"observations": {}})
    f = tmp_path / "m.yaml"
    f.write_text("observation: {'state/ee_pos': pos}\naction_columns: [0, 1, 2, 3, 4, 5, 6]\n")
    assert RemoteMapping.load(str(f)).observation == {"state/ee_pos": "pos"}
    assert RemoteMapping.load("droid") is DROID and RemoteMapping.load("") is None


def test_node_parameters_build_a_remote_backend(monkeypatch):
    from types import SimpleNamespace

    pol = FakePolicy()
    monkeypatch.setenv("POLICY_SERVE_API_KEY", "k")
    with PolicyServer(pol, ServeConfig(port=0, api_key="k")) as server:
        p = SimpleNamespace(host="127.0.0.1", port=server.port, remote_mapping="", image_codec="jpeg")
        with RemotePolicy.from_params(p, spec=pol.spec) as remote:
            assert remote.horizon == 8 and remote._jpeg and "remote ws://127.0.0.1" in remote.device
            assert remote.infer(observation(pol.spec))["actions"].shape == (8, 7)
        wrong = tiny_spec(chunk_horizon=4)
        with pytest.raises(ValueError, match="chunk_horizon"):
            RemotePolicy.from_params(p, spec=wrong).connect()


def test_rig_up_starts_the_policy_node_on_a_remote_server():
    from apps.bringup import compose_rig, graph

    nodes = {n.name: n for n in graph(compose_rig(["rig.teleop.device=none", "policy_server=gpu-box:8123",
                                                   "policy_mapping=droid", "record_path=/data/ep.zarr"]))}
    p = nodes["policy"].parameters
    assert (p["backend"], p["host"], p["port"], p["remote_mapping"]) == ("remote", "gpu-box", 8123, "droid")
    assert nodes["recorder"].parameters["source"] == "policy"
    assert nodes["recorder"].parameters["policy_version"] == "gpu-box:8123"


def test_remote_policy_reconnects_after_the_server_restarts():
    pol = FakePolicy()
    server = PolicyServer(pol, ServeConfig(port=0)).connect()
    port = server.port
    remote = RemotePolicy("127.0.0.1", port, timeout=5.0).connect()
    assert remote.infer(observation(pol.spec))["actions"].shape == (8, 7)
    server.close()
    with pytest.raises(RemoteError, match="reconnects on the next call"):
        remote.infer(observation(pol.spec))
    with PolicyServer(pol, ServeConfig(port=port)):
        assert remote.infer(observation(pol.spec))["actions"].shape == (8, 7)  # a fresh connection
    remote.close()


@pytest.mark.slow
def test_policy_serve_console_script_serves_a_checkpoint(checkpoint):
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "policy.serve", str(checkpoint), "--port", str(port),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.monotonic()
        with RemotePolicy("127.0.0.1", port, timeout=120.0) as remote:  # waits while the server loads
            assert time.monotonic() - t0 < 120
            out = remote.infer(observation(remote.spec))
            assert out["actions"].shape == (8, 7) and np.all(np.abs(out["actions"]) <= 1)
            assert remote.metadata["checkpoint"] == "policy"
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[0]
    assert "policy-serve on ws://127.0.0.1" in log
