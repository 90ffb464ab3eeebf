"""The console's pure model: control, episode timer, session counters, diagnostics."""

from __future__ import annotations

import numpy as np
import pytest

from apps.console.frames import FrameCache, encode_jpeg, fit
from apps.console.state import ConsoleState

FRANKA = {"clipped": "3", "rejected": "1", "hold": "False", "period_p99_ms": "2.5", "ignored": "0"}


def test_control_follows_hold_then_intervention():
    s = ConsoleState()
    assert s.snapshot(0.0)["control"] == "policy"
    s.on_status("/franka: franka", 0, "running", FRANKA)
    s.on_intervening(True, 1.0)
    assert s.snapshot(1.0)["control"] == "operator"
    s.on_status("/franka: franka", 0, "holding (hold service)", {**FRANKA, "hold": "True"})
    snap = s.snapshot(2.0)
    assert snap["control"] == "holding"
    assert snap["safety"]["clipped"] == 3 and snap["safety"]["rejected"] == 1 and snap["safety"]["hold"] is True
    assert snap["franka"]["message"] == "holding (hold service)"


def test_session_counts_episodes_successes_interventions_and_operator_time():
    s = ConsoleState(task="reach")
    s.on_event("start", 0.0)
    s.on_intervening(True, 1.0)
    s.on_intervening(False, 3.0)
    s.on_intervening(True, 4.0)
    assert s.snapshot(5.0)["session"]["operator_time"] == pytest.approx(3.0)  # 2 s + 1 s still running
    s.on_intervening(False, 5.0)
    assert s.snapshot(6.0)["episode"]["elapsed"] == pytest.approx(6.0)
    s.on_event("success", 6.0)
    s.on_event("success", 6.5)  # a second click ends nothing
    assert s.snapshot(9.0)["episode"] == {"active": False, "elapsed": 6.0, "last_outcome": "success",
                                          "interventions": 2}
    s.on_event("start", 10.0)
    s.on_event("failure", 12.0)
    s.on_event("start", 13.0)
    s.on_event("abort", 14.0)
    sess = s.snapshot(15.0)["session"]
    assert (sess["episodes"], sess["successes"], sess["failures"], sess["aborted"]) == (2, 1, 1, 1)
    assert sess["interventions_per_episode"] == pytest.approx(1.0)  # 2 + 0 over 2 episodes
    assert sess["operator_time"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="expected one of"):
        s.on_event("explode", 16.0)


def test_instruction_and_status_limits():
    s = ConsoleState()
    s.on_instruction("pick up the cube")
    assert s.snapshot(0)["instruction"] == "pick up the cube"
    with pytest.raises(ValueError, match="at most"):
        s.on_instruction("x" * 10_001)
    s.on_status("/cameras: front", 2, "no frames", {"rate_hz": "nan"})
    snap = s.snapshot(0)
    assert snap["nodes"]["/cameras: front"] == {"level": "ERROR", "message": "no frames"}
    assert snap["franka"]["level"] == "STALE"  # no franka status yet


def test_the_rigs_prompt_is_shown_until_withdrawn():
    s = ConsoleState()
    assert s.snapshot(0)["prompt"] == ""
    s.on_prompt("The reward classifier says success: confirm with success or reject with failure")
    assert s.snapshot(0)["prompt"].startswith("The reward classifier says success")
    s.on_prompt("")  # answered: the env withdraws it
    assert s.snapshot(0)["prompt"] == ""


def test_classifier_probability_and_threshold():
    s = ConsoleState()
    assert s.snapshot(0.0)["classifier"] == {"probability": None, "age": None, "threshold": None}
    s.on_threshold(0.5)
    s.on_reward(0.73, 10.0)
    c = s.snapshot(11.0)["classifier"]
    assert c["probability"] == pytest.approx(0.73) and c["threshold"] == 0.5 and c["age"] == pytest.approx(1.0)
    s.on_reward(float("nan"), 12.0)
    assert s.snapshot(12.0)["classifier"]["probability"] is None  # JSON has no NaN


def test_successes_the_classifier_called_are_told_apart_from_the_operators():
    s = ConsoleState()
    s.on_event("start", 0.0)
    s.on_reward(0.8, 9.9)
    s.on_event("success", 10.0)  # no threshold known yet: nobody can tell
    assert s.classifier_success_starts(11.0) == []
    s.on_threshold(0.5)
    s.on_event("start", 20.0)
    s.on_reward(0.3, 29.5)
    s.on_event("success", 30.0)  # the operator's: the classifier said 0.3
    s.on_event("start", 40.0)
    s.on_reward(0.2, 49.0)
    s.on_event("success", 50.0)
    s.on_reward(0.9, 50.1)  # the probability may arrive just after the event it caused
    assert s.classifier_success_starts(50.2) == []  # still inside the window: not judged yet
    assert s.classifier_success_starts(51.0) == [40.0]
    assert s.classifier_success_starts(60.0) == [40.0]


class _Img:
    def __init__(self, arr):
        self.arr = arr


def test_frame_cache_encodes_once_per_frame_and_size():
    cache = FrameCache(["front"], 32, 80, decode=lambda m: m.arr)
    assert cache.jpeg("front") is None
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = 255
    cache.put("front", _Img(img), 123.0)
    a = cache.jpeg("front")
    assert a[0] == 1 and a[1] == 123.0 and a[2][:2] == b"\xff\xd8"
    assert cache.jpeg("front") is a and cache.encoded == 1  # cached: two pages share it
    full = cache.jpeg("front", full=True)
    import cv2

    small = cv2.imdecode(np.frombuffer(a[2], np.uint8), cv2.IMREAD_COLOR)
    big = cv2.imdecode(np.frombuffer(full[2], np.uint8), cv2.IMREAD_COLOR)
    assert small.shape == (24, 32, 3) and big.shape == (48, 64, 3)
    cache.put("front", object(), 124.0)  # a malformed image: the last good one is served
    assert cache.jpeg("front") is a and cache.errors == 1 and "front" in cache.last_error
    with pytest.raises(KeyError, match="no camera"):
        cache.jpeg("side")
    with pytest.raises(ValueError, match="jpeg_quality"):
        FrameCache(["front"], 32, 0)


def test_fit_keeps_the_aspect_and_never_upscales():
    assert fit(np.zeros((480, 640, 3), np.uint8), 128).shape == (96, 128, 3)
    assert fit(np.zeros((10, 20, 3), np.uint8), 128).shape == (10, 20, 3)
    assert encode_jpeg(np.zeros((8, 8), np.uint8))[:2] == b"\xff\xd8"
