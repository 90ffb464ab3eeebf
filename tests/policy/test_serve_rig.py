"""The remote backend inside `rig-up rig=sim`: policy-serve drives the simulated arm through the policy node."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped

sys.path.insert(0, str(Path(__file__).parents[1] / "robot"))  # the shared ROS probe helpers
from _ros_probe import Probe  # noqa: E402
from waiting import wait_for  # noqa: E402

from policy.serve import PolicyServer, ServeConfig  # noqa: E402
from rig.spec import default_spec  # noqa: E402
from robot.ros.qos import COMMAND_QOS, STATE_QOS  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.render]

SMALL_CAMERAS = [f"rig.cameras.cameras.{i}.{k}={v}" for i in (0, 1) for k, v in
                 (("width", 64), ("height", 48), ("fps", 15.0))]


class SweepPolicy:
    """A served policy that moves the TCP along +x (a scripted stand-in for a checkpoint)."""

    def __init__(self) -> None:
        self.spec = default_spec(32)
        self.path = None
        self.requests = 0
        self.instructions: list[str] = []
        self.lock = threading.Lock()

    def infer(self, obs, prefix=None):
        with self.lock:
            self.requests += 1
            self.instructions.append(obs["instruction"])
        chunk = np.zeros((self.spec.action.chunk_horizon, 7), np.float32)
        chunk[:, 0] = 0.3  # 6 mm per tick along +x
        chunk[:, 6] = 1.0  # gripper open
        return {"actions": chunk}


def test_policy_serve_drives_the_sim_arm_through_the_remote_backend(tmp_path: Path):
    pol = SweepPolicy()
    probe = Probe()
    probe.subscribe("ee_pose", PoseStamped, STATE_QOS)
    probe.subscribe("target_pose", PoseStamped, COMMAND_QOS)
    log = (tmp_path / "rig-up.log").open("w")
    with PolicyServer(pol, ServeConfig(port=0)) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "apps.bringup", "rig=sim", "duration=90", "rig.teleop.device=none",
             f"policy_server=127.0.0.1:{server.port}", "instruction=sweep right", *SMALL_CAMERAS],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        )
        try:
            assert wait_for(lambda: probe.got("ee_pose"), timeout=90), (tmp_path / "rig-up.log").read_text()[-3000:]
            start = probe.got("ee_pose")[-1].pose.position.x

            def moved():
                return probe.got("ee_pose")[-1].pose.position.x - start > 0.03

            assert wait_for(moved, timeout=60), (pol.requests, (tmp_path / "rig-up.log").read_text()[-3000:])
            assert pol.requests >= 2 and set(pol.instructions) == {"sweep right"}
            assert probe.got("target_pose")[-1].header.frame_id == "panda_link0"
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            probe.close()
            log.close()
