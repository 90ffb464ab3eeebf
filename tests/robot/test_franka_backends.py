"""Backend pieces without ROS: the gripper worker (latest command wins, never blocks the caller)."""

from __future__ import annotations

import threading
import time

from waiting import wait_for

from rig.safety import GripperCommand
from robot.backends.base import GripperWorker


class FakeHand:
    """A gripper whose moves take ``duration`` seconds and can be stopped, like franky's async calls."""

    def __init__(self, duration: float = 0.3):
        self.duration = duration
        self.width = 0.08
        self.started: list[GripperCommand] = []
        self.stops = 0
        self._stop = threading.Event()

    def execute(self, cmd: GripperCommand):
        self.started.append(cmd)
        self._stop.clear()
        done = threading.Event()
        result = {"ok": False}

        def run():
            end = time.monotonic() + self.duration
            while time.monotonic() < end:
                if self._stop.wait(0.005):
                    done.set()
                    return
            self.width = cmd.width
            result["ok"] = True
            done.set()

        threading.Thread(target=run, daemon=True).start()

        class Future:
            def wait(self, timeout=None):
                return done.wait(timeout)

            def get(self):
                return result["ok"]

        return Future()

    def poll(self):
        return self.width, False

    def stop(self):
        self.stops += 1
        self._stop.set()


def test_gripper_worker_latest_command_wins_and_submit_never_blocks():
    hand = FakeHand(duration=0.3)
    w = GripperWorker(hand.execute, hand.poll, hand.stop, poll_period=0.01)
    w.start()
    try:
        t0 = time.monotonic()
        w.submit(GripperCommand(0.05, 0.1, 0.0))
        time.sleep(0.05)
        w.submit(GripperCommand(0.02, 0.1, 0.0))  # supersedes the running move
        assert time.monotonic() - t0 < 0.1, "submit blocked"
        wait_for(lambda: hand.width == 0.02 and not w.state.busy, timeout=3.0, period=0.01)
        assert hand.width == 0.02
        assert hand.stops == 1 and [c.width for c in hand.started] == [0.05, 0.02]
        assert w.state.error == ""
        # repeats of the command in force are dropped (a policy streams its gripper command)
        for _ in range(20):
            w.submit(GripperCommand(0.0205, 0.1, 0.0))
        time.sleep(0.1)
        assert len(hand.started) == 2
    finally:
        w.stop()


def test_gripper_worker_reports_failures_without_dying():
    hand = FakeHand(duration=0.0)

    def broken(cmd):
        raise RuntimeError("gripper fault")

    w = GripperWorker(broken, hand.poll, hand.stop, poll_period=0.01)
    w.start()
    try:
        w.submit(GripperCommand(0.03, 0.1, 0.0))
        wait_for(lambda: "gripper fault" in w.state.error, timeout=2.0, period=0.01)
        assert "gripper fault" in w.state.error
        assert w._thread is not None and w._thread.is_alive()
    finally:
        w.stop()
