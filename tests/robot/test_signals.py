"""SIGTERM and SIGINT stop every executable through its lifecycle (policy-node: tests/policy/test_policy_node.py).

systemd, docker and ``ros2 launch`` stop a process with SIGTERM (then SIGKILL); an operator
presses Ctrl-C (SIGINT). Each console script runs as a subprocess exactly as ``pyproject.toml``
declares it; all of them start together, get the signal together, and must exit with 0 having
shut down through the lifecycle (``on_shutdown``: stop, teardown) with no traceback.
"""

from __future__ import annotations

import signal
import uuid

import pytest
from _executables import ACTIVE, SHUT_DOWN, kill_all, start, stop_all, wait_ready

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.render]

#: s from the signal to the exit before a run counts as hung (docker's SIGKILL comes after 10 s)
EXIT_WITHIN = 20.0


def _ros(ns: str, *params: str) -> list[str]:
    out = ["--ros-args", "-r", f"__ns:={ns}"]
    for p in params:
        out += ["-p", p]
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_every_executable_stops_through_its_lifecycle(sig, tmp_path):
    ns = f"/sig{uuid.uuid4().hex[:8]}"
    cams = [f"rig.cameras.cameras.{i}.{k}={v}" for i in (0, 1) for k, v in
            (("width", 32), ("height", 24), ("fps", 5.0))]
    runs = [
        start("franka-node", _ros(f"{ns}/a", "state_rate_hz:=100.0"), tmp_path),
        start("camera-node", _ros(f"{ns}/b", "names:=['front']", "widths:=[32]", "heights:=[24]", "fps:=[5.0]"),
              tmp_path),
        start("teleop-node", _ros(f"{ns}/c", "teleop.device:=none"), tmp_path),
        start("recorder-node", _ros(f"{ns}/d", f"store:={tmp_path / 'episodes.zarr'}", "cameras:=['front']"),
              tmp_path),
        start("rig-up", ["rig=sim", "duration=300", f"rig.namespace={ns}/e", "rig.teleop.device=none", *cams],
              tmp_path, ready=" up: ", cwd=tmp_path),
    ]
    try:
        pending = wait_ready(runs, timeout=180)
        assert not pending, "\n\n".join(f"{r.name} did not come up (exit {r.proc.poll()}):\n{r.output()[-3000:]}"
                                        for r in pending)
        stop_all(runs, sig, EXIT_WITHIN)
        print(f"{sig.name}: s to exit: " + ", ".join(f"{r.name} {r.exit_s:.1f}" for r in runs))  # with -s
        failed = []
        for r in runs:
            out = r.output()
            expect = max(1, out.count(ACTIVE))  # every node that went active (rig-up runs several)
            if r.proc.returncode != 0 or out.count(SHUT_DOWN) < expect or "Traceback" in out:
                failed.append(f"{r.name}: exit {r.proc.poll()} after {r.exit_s:.1f} s, "
                              f"{out.count(SHUT_DOWN)} lifecycle shutdowns:\n{out[-3000:]}")
        assert not failed, f"{sig.name}:\n\n" + "\n\n".join(failed)
    finally:
        kill_all(runs)
