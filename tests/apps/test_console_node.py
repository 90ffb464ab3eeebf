"""The console node on its own (no rig): binding, the token, take over / hand back, a missing hold service."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import rclpy
from std_msgs.msg import Bool

sys.path.insert(0, str(Path(__file__).parents[1] / "robot"))  # the shared ROS probe helpers
from _ros_probe import Probe, Spinner  # noqa: E402
from waiting import wait_for  # noqa: E402

from apps.console.node import ConsoleNode
from robot.ros.qos import COMMAND_QOS, LATCHED_QOS

pytestmark = [pytest.mark.ros]


def _node(spinner, **params):
    node = ConsoleNode("console", context=spinner.context,
                       parameter_overrides=[rclpy.Parameter(k, value=v) for k, v in params.items()])
    spinner.add(node)
    return node


def _req(url, method="GET", token=None, data=None):
    req = urllib.request.Request(url, method=method, data=data,
                                 headers={"X-Console-Token": token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_bound_wider_the_page_needs_the_generated_token(tmp_path):
    sp = Spinner().start()
    try:
        url_file = tmp_path / "url"
        node = _node(sp, host="0.0.0.0", port=0, url_file=str(url_file))
        full = url_file.read_text().strip()
        token = full.split("?token=")[1]
        assert len(token) >= 24 and node.url == full
        base = f"http://127.0.0.1:{node.web.port}/"
        assert _req(base)[0] == 401
        code, body = _req(base + f"?token={token}")
        assert code == 200 and token.encode() in body
        assert _req(base + "api/state")[0] == 401
        assert _req(base + "api/state", token=token)[0] == 200
    finally:
        sp.close()


def test_a_short_token_fails_configure_naming_the_parameter():
    sp = Spinner()
    try:
        node = ConsoleNode("console", context=sp.context, parameter_overrides=[rclpy.Parameter("token", value="abc")])
        sp.nodes.append(node)
        from rclpy.lifecycle import TransitionCallbackReturn

        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    finally:
        sp.close()


def test_take_over_publishes_the_flag_unless_a_teleop_device_owns_it():
    sp = Spinner().start()
    probe = Probe()
    probe.subscribe("teleop/intervening", Bool, LATCHED_QOS)
    token = "z" * 20
    try:
        node = _node(sp, port=0, token=token)
        base = node.web.url
        code, body = _req(base + "api/action/take_over", "POST", token, b"{}")
        assert code == 200, body
        assert wait_for(lambda: [m.data for m in probe.got("teleop/intervening")][-1:] == [True], timeout=5)
        assert wait_for(lambda: json.loads(_req(base + "api/state", token=token)[1])["control"] == "operator",
                        timeout=5)
        assert _req(base + "api/action/hand_back", "POST", token, b"{}")[0] == 200
        assert wait_for(lambda: [m.data for m in probe.got("teleop/intervening")][-1:] == [False], timeout=5)
        # the reward classifier's belief, as the env adapter publishes it
        from std_msgs.msg import Float32

        probe.publisher("reward/threshold", Float32, LATCHED_QOS).publish(Float32(data=0.5))
        prob = probe.publisher("reward/probability", Float32, COMMAND_QOS)

        def classifier():
            prob.publish(Float32(data=0.75))
            return json.loads(_req(base + "api/state", token=token)[1])["classifier"]

        assert wait_for(lambda: classifier()["probability"] == 0.75 and classifier()["threshold"] == 0.5,
                        timeout=10, period=0.2), classifier()
        # a teleop node publishes the flag: the console does not fight it
        probe.publisher("teleop/intervening", Bool, LATCHED_QOS)
        assert wait_for(lambda: node.count_publishers("teleop/intervening") >= 2, timeout=5)
        code, body = _req(base + "api/action/take_over", "POST", token, b"{}")
        assert code == 409 and b"probe publishes teleop/intervening" in body
        # no franka node: STOP says so instead of pretending
        code, body = _req(base + "api/action/stop", "POST", token, b"{}")
        assert code == 409 and b"hold service is not available" in body
    finally:
        probe.close()
        sp.close()


@pytest.mark.slow
def test_the_page_draws_the_learner_curves(tmp_path):
    from playwright.sync_api import sync_playwright
    from test_console_browser import launch_browser
    from test_console_curves import write_learner_log

    write_learner_log(tmp_path)
    sp = Spinner().start()
    try:
        node = _node(sp, port=0, learner_log=str(tmp_path))
        with sync_playwright() as p:
            browser = launch_browser(p)
            page = browser.new_page()
            page.goto(node.web.url)
            page.wait_for_selector("#curve-success polyline", timeout=30_000)
            assert page.is_visible("#learner")
            assert page.locator("#curves svg").count() == 3
            assert "30 episodes" in page.inner_text("#learner-info")
            browser.close()
    finally:
        sp.close()
