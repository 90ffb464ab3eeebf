"""The operator console in a real headless browser (Debian's chromium via playwright) against ``rig-up rig=sim``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from std_msgs.msg import Float32, String

sys.path.insert(0, str(Path(__file__).parents[1] / "robot"))  # the shared ROS probe helpers
from _ros_probe import Probe  # noqa: E402
from waiting import wait_for  # noqa: E402

from apps.bringup import compose_rig, graph
from robot.ros.qos import COMMAND_QOS, LATCHED_QOS, STATE_QOS

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.render]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CAMERAS = [f"rig.cameras.cameras.{i}.{k}={v}" for i in (0, 1) for k, v in
           (("width", 128), ("height", 96), ("fps", 10.0))] + ["rig.cameras.policy_image_size=48"]


def launch_browser(p):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/bootstrap.sh does)")
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def classifier_positives(store: Path, overrides: list[str], n: int = 2) -> None:
    """Episodes the reward classifier called successful (source rl), in the recorder's own spec."""
    from flywheel.data import EpisodeStore
    from flywheel.data.recorder import RecorderConfig

    rp = {d.name: d for d in graph(compose_rig(overrides))}["recorder"].parameters
    spec = RecorderConfig(**{k: rp[k] for k in ("control_hz", "cameras", "image_size", "max_translation",
                                                "max_rotation", "chunk_horizon")}).rig_spec()
    with EpisodeStore(store, "w", spec) as s:
        for i in range(n):
            arrays = {}
            for k, a in spec.observation_specs().items():
                v = np.zeros(a.shape, a.dtype)
                if a.dtype == "uint8":
                    v[..., i % 3] = 200  # a red and a green episode
                elif k == "state/ee_quat":
                    v[3] = 1.0
                arrays[k] = np.stack([v] * 4)
            arrays["action"] = np.zeros((4, 7), np.float32)
            s.add_episode(arrays, success=True, source="rl", task="reach")


def post(url: str, path: str, token: str | None, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + path, method="POST", data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"X-Console-Token": token} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def franka_hold(probe: Probe) -> bool | None:
    for arr in reversed(probe.got("/diagnostics")):
        for s in arr.status:
            vals = {kv.key: kv.value for kv in s.values}
            if "clipped" in vals and "hold" in vals:
                return vals["hold"] == "True"
    return None


def test_console_drives_the_sim_rig_from_a_browser(tmp_path: Path):
    from playwright.sync_api import sync_playwright

    from flywheel.data import EpisodeStore

    store = tmp_path / "episodes.zarr"
    url_file = tmp_path / "console.url"
    overrides = ["rig=sim", "rig.teleop.device=none", *CAMERAS, f"record_path={store}", "task=reach",
                 "console=true", "console_port=0", f"console_url_file={url_file}"]
    classifier_positives(store, overrides)
    probe = Probe()
    probe.subscribe("episode/event", String, COMMAND_QOS)
    probe.subscribe("ee_pose", PoseStamped, STATE_QOS)
    probe.subscribe("/diagnostics", DiagnosticArray, 10)
    probe.subscribe("policy/instruction", String, LATCHED_QOS)
    probe_event = probe.publisher("episode/event", String, COMMAND_QOS)
    probe_reward = probe.publisher("reward/probability", Float32, COMMAND_QOS)
    probe.publisher("reward/threshold", Float32, LATCHED_QOS).publish(Float32(data=0.5))
    probe_prompt = probe.publisher("reset/prompt", String, LATCHED_QOS)
    log = (tmp_path / "rig-up.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "apps.bringup", "duration=300", *overrides],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)

    def rig_log() -> str:
        return (tmp_path / "rig-up.log").read_text()[-4000:]

    try:
        assert wait_for(lambda: url_file.exists() and url_file.read_text().strip(), timeout=90), rig_log()
        full_url = url_file.read_text().strip()
        base, token = full_url.split("?token=")
        assert base.startswith("http://127.0.0.1:")
        with sync_playwright() as p:
            browser = launch_browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base)  # loopback: the page carries its token
            page.wait_for_function("() => window.consoleStats && window.consoleStats.connected", timeout=30_000)
            # the camera views update, at the policy's resolution (longer side 48), full resolution on click
            page.wait_for_function("() => (window.consoleStats.frames.front || 0) >= 3 && "
                                   "(window.consoleStats.frames.wrist || 0) >= 3", timeout=60_000)
            assert page.eval_on_selector("#cam-front", "e => [e.naturalWidth, e.naturalHeight]") == [48, 36]
            page.click("#view-wrist")
            page.wait_for_function("() => document.querySelector('#cam-wrist').naturalWidth === 128",
                                   timeout=30_000)
            page.click("#view-wrist")
            assert page.inner_text("#control") == "policy"
            page.wait_for_function("() => document.querySelectorAll('#review .item').length === 2",
                                   timeout=30_000)
            page.fill("#instruction", "reach the red cube")
            page.click("#instruction-form button")
            assert wait_for(lambda: [m.data for m in probe.got("policy/instruction")][-1:] == ["reach the red cube"],
                            timeout=10)
            time.sleep(0.5)  # the recorder takes it from the same latched topic
            # the rig's question to the operator shows as a banner until it is withdrawn
            probe_prompt.publish(String(data="The reward classifier says success: confirm with success"))
            page.wait_for_function("() => { const p = document.querySelector('#prompt'); return !p.hidden && "
                                   "p.textContent.startsWith('The reward classifier says success'); }", timeout=10_000)
            probe_prompt.publish(String(data=""))
            page.wait_for_function("() => document.querySelector('#prompt').hidden", timeout=10_000)
            # start, then success: the events go on episode/event and the recorder stores the episode
            page.click("button[data-action=start]")
            assert wait_for(lambda: "start" in [m.data for m in probe.got("episode/event")], timeout=10)
            page.wait_for_function("() => window.consoleStats.state.episode.active", timeout=10_000)
            time.sleep(1.5)  # a few control ticks to record
            page.click("button[data-action=success]")
            assert wait_for(lambda: "success" in [m.data for m in probe.got("episode/event")], timeout=10)

            def recorded():
                return [r for r in EpisodeStore(store, "r").records if r.source == "human"]

            assert wait_for(recorded, timeout=20), rig_log()
            rec = recorded()[0]
            assert rec.success is True and rec.length > 0 and rec.instruction == "reach the red cube"
            page.wait_for_function("() => window.consoleStats.state.session.successes === 1", timeout=10_000)
            # the next episode ends as the env adapter ends it: its reward classifier crosses the threshold
            page.click("button[data-action=start]")
            assert wait_for(lambda: [m.data for m in probe.got("episode/event")].count("start") == 2, timeout=10)
            time.sleep(1.5)
            probe_reward.publish(Float32(data=0.9))
            probe_event.publish(String(data="success"))
            assert wait_for(lambda: len(recorded()) == 2, timeout=20), rig_log()
            page.wait_for_function("() => document.querySelectorAll('#review .item').length === 3", timeout=30_000)
            assert page.inner_text("#reward").startswith("0.90 >= 0.50")
            page.screenshot(path=str(tmp_path / "console.png"))
            # STOP holds the arm through the franka node's hold service
            page.click("#stop")
            assert wait_for(lambda: franka_hold(probe) is True, timeout=10), "the franka node is not holding"
            page.wait_for_function("() => document.querySelector('#control').textContent === 'holding'",
                                   timeout=10_000)
            page.click("button[data-action=release]")
            assert wait_for(lambda: franka_hold(probe) is False, timeout=10)
            # a classifier positive rejected, the other confirmed: their labels change in the store
            page.click("#review-0 button[data-verdict=reject]")
            page.click("#review-1 button[data-verdict=confirm]")
            page.click("#review-3 button[data-verdict=reject]")
            page.wait_for_function("() => window.consoleStats.state.review.audit.reviewed === 3", timeout=15_000)
            audit = page.evaluate("() => window.consoleStats.state.review.audit")
            assert audit["precision"] == pytest.approx(1 / 3)
            records = EpisodeStore(store, "r").records  # the store applies the operators' labels
            assert [r.success for r in records] == [False, True, True, False]  # #2: the operator's own success
            assert records[0].extra["review"]["previous"] is True
            assert records[0].extra["review"]["audit"]["fp_per_100"] is not None
            assert page.evaluate("() => window.consoleStats.errors") == []
            # forged requests without the token and unknown buttons are refused
            probe.clear(["episode/event"])
            assert post(base, "api/action/success", None)[0] == 401
            assert post(base, "api/action/success", "forged-token-123456789")[0] == 401
            code, body = post(base, "api/action/launch_missiles", token)
            assert code == 400 and "unknown action" in body["error"]
            time.sleep(1.0)
            assert probe.got("episode/event") == []
            # a closed browser leaves the rig running
            browser.close()
        probe.clear(["ee_pose"])
        assert wait_for(lambda: len(probe.got("ee_pose")) > 10, timeout=10) and proc.poll() is None, rig_log()
        with urllib.request.urlopen(urllib.request.Request(base + "api/state", headers={"X-Console-Token": token}),
                                    timeout=10) as r:
            assert json.loads(r.read())["session"]["successes"] == 2
        if os.environ.get("CONSOLE_SCREENSHOT"):  # CONSOLE_SCREENSHOT=docs/console.png refreshes the README's
            Path(os.environ["CONSOLE_SCREENSHOT"]).write_bytes((tmp_path / "console.png").read_bytes())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, rig_log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        probe.close()
        log.close()
