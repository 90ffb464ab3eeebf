"""The console's web app against a fake node: the token, refused requests, actions, frames, the websocket."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from apps.console.frames import encode_jpeg
from apps.console.web import ACTIONS, Auth, make_app

TOKEN = "t" * 24


class FakeNode:
    cameras = ["front"]

    def __init__(self):
        self.acts, self.texts, self.reviews = [], [], []
        self.seq = 0

    def snapshot(self):
        return {"control": "policy", "cameras": {"front": {"age": 0.1}}}

    def act(self, name):
        self.acts.append(name)
        return (name != "take_over"), name

    def instruct(self, text):
        self.texts.append(text)
        return True, "ok"

    def frame(self, camera, full):
        import numpy as np

        self.seq += 1
        return self.seq, 1.0, encode_jpeg(np.zeros((8, 8 if not full else 16, 3), np.uint8))

    def review_items(self):
        return {"enabled": True, "pending": []}

    def review(self, index, verdict):
        self.reviews.append((index, verdict))
        return True, "relabelled"

    def review_frame(self, index, camera):
        return None

    def curves(self):
        return {"enabled": True, "curves": {"success": [[0, 0.0], [10, 1.0]]}, "episodes": 2}


def client(host="127.0.0.1"):
    node = FakeNode()
    return node, TestClient(make_app(node, Auth(TOKEN, host), frame_hz=50, state_hz=50),
                            base_url="http://127.0.0.1:8080")


H = {"X-Console-Token": TOKEN}


def test_page_embeds_the_token_on_loopback_and_needs_it_when_bound_wider():
    _, c = client()
    r = c.get("/")
    assert r.status_code == 200 and TOKEN in r.text and "STOP" in r.text
    assert c.get("/console.js").status_code == 200 and c.get("/nope.txt").status_code == 404
    # DNS rebinding: a foreign host name is refused on a loopback bind
    assert c.get("/", headers={"host": "evil.example:8080"}).status_code == 403
    _, wide = client("0.0.0.0")
    assert wide.get("/").status_code == 401
    assert wide.get("/?token=" + "x" * 24).status_code == 401
    assert wide.get(f"/?token={TOKEN}").status_code == 200


def test_actions_need_the_token_in_a_header_and_unknown_ones_are_refused():
    node, c = client()
    assert c.post("/api/action/success").status_code == 401
    assert c.post("/api/action/success", headers={"X-Console-Token": "wrong" * 5}).status_code == 401
    assert c.post(f"/api/action/success?token={TOKEN}").status_code == 401  # POST: header only (no forms)
    assert c.post("/api/action/success", headers={**H, "Origin": "http://evil.example"}).status_code == 403
    assert node.acts == []
    r = c.post("/api/action/success", headers=H)
    assert r.status_code == 200 and r.json() == {"ok": True, "message": "success"}
    r = c.post("/api/action/self_destruct", headers=H)
    assert r.status_code == 400 and "unknown action" in r.json()["error"]
    assert c.post("/api/action/take_over", headers=H).status_code == 409  # the node said no
    assert node.acts == ["success", "take_over"]
    assert set(ACTIONS) >= {"start", "success", "failure", "reset", "abort", "take_over", "hand_back", "hold",
                            "stop"}


def test_instruction_and_review_bodies_are_checked():
    node, c = client()
    assert c.post("/api/instruction", headers=H, json={"text": "pick"}).status_code == 200
    assert c.post("/api/instruction", headers=H, json={"text": 3}).status_code == 400
    assert c.post("/api/instruction", headers=H, content=b"not json").status_code == 400
    assert c.post("/api/instruction", headers=H, content=b"x" * 20_000).status_code == 400
    assert c.post("/api/review/4", headers=H, json={"verdict": "confirm"}).status_code == 200
    assert c.post("/api/review/4", headers=H, json={"verdict": "sure"}).status_code == 400
    assert c.post("/api/review/x", headers=H, json={"verdict": "reject"}).status_code == 400
    assert node.texts == ["pick"] and node.reviews == [(4, "confirm")]


def test_state_and_frames():
    _, c = client()
    assert c.get("/api/state").status_code == 401
    assert c.get("/api/state", headers=H).json()["control"] == "policy"
    r = c.get(f"/api/frame/front?token={TOKEN}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert c.get("/api/frame/side", headers=H).status_code == 404
    assert c.get("/api/review/3/frame/front", headers=H).status_code == 404
    assert c.get("/api/curves").status_code == 401
    assert c.get("/api/curves", headers=H).json()["curves"]["success"][-1] == [10, 1.0]


def test_websocket_streams_state_and_frames_and_refuses_without_token():
    from starlette.websockets import WebSocketDisconnect

    _, c = client()
    with pytest.raises(WebSocketDisconnect):
        with c.websocket_connect("ws://127.0.0.1:8080/ws") as ws:
            ws.receive_text()
    with c.websocket_connect(f"ws://127.0.0.1:8080/ws?token={TOKEN}") as ws:
        state = json.loads(ws.receive_text())
        assert state["type"] == "state" and state["review"]["enabled"]
        frame = ws.receive_bytes()
        n = int.from_bytes(frame[:2], "big")
        head = json.loads(frame[2:2 + n])
        assert head["camera"] == "front" and not head["full"] and frame[2 + n:][:2] == b"\xff\xd8"
        ws.send_text(json.dumps({"full": "front"}))
        for _ in range(20):
            m = ws.receive()
            if m.get("bytes"):
                n = int.from_bytes(m["bytes"][:2], "big")
                if json.loads(m["bytes"][2:2 + n])["full"]:
                    break
        else:
            pytest.fail("no full-resolution frame after asking for one")
