"""Teleop device mapping on recorded device events, and the keyboard through a real pty."""

from __future__ import annotations

import os
import pty
import termios
from types import SimpleNamespace

import numpy as np
import pytest

from robot.backends.teleop_devices import (
    GamepadDevice,
    GamepadMapper,
    KeyboardDevice,
    KeyMapper,
    SpaceMouseDevice,
    SpaceMouseMapper,
    TeleopDeviceError,
    make_device,
    parse_keys,
)

# A recorded pyspacemouse session (t, x, y, z, roll, pitch, yaw, buttons): noise at rest,
# a push forward (device -y), a twist, the left button (close), release, the right button (open).
SPACEMOUSE_TRACE = [
    (0.00, 0.01, -0.02, 0.00, 0.0, 0.00, 0.00, [0, 0]),
    (0.10, 0.00, -0.60, 0.03, 0.0, 0.00, 0.00, [0, 0]),
    (0.20, 0.02, -1.30, 0.00, 0.0, 0.00, 0.40, [0, 0]),
    (0.30, 0.00, 0.00, 0.00, 0.0, 0.00, 0.00, [1, 0]),
    (0.35, 0.00, 0.00, 0.00, 0.0, 0.00, 0.00, [1, 0]),
    (1.00, 0.00, 0.00, 0.00, 0.0, 0.00, 0.00, [0, 0]),
    (1.10, 0.00, 0.00, 0.00, 0.0, 0.00, 0.00, [0, 1]),
]


def _sm(row):
    t, x, y, z, roll, pitch, yaw, b = row
    return SimpleNamespace(t=t, x=x, y=y, z=z, roll=roll, pitch=pitch, yaw=yaw, buttons=b)


def test_spacemouse_mapping_on_recorded_trace():
    m = SpaceMouseMapper(release_after=0.5)
    out = [m(_sm(r), r[0]) for r in SPACEMOUSE_TRACE]
    assert not out[0].intervening and np.all(out[0].twist == 0)  # below the dead zone
    np.testing.assert_allclose(out[1].twist, [0.6, 0, 0, 0, 0, 0])  # device -y is base +x
    np.testing.assert_allclose(out[2].twist, [1.0, 0, 0, 0, 0, -0.4])  # clipped, yaw sign flipped
    assert out[1].intervening and out[2].intervening
    assert out[3].gripper == "close" and out[4].gripper is None  # only the press edge counts
    assert out[4].intervening  # within release_after of the button press
    assert not out[5].intervening  # 0.65 s after the last motion: control returns
    assert out[6].gripper == "open" and out[6].intervening


def test_gamepad_mapping_on_recorded_events():
    m = GamepadMapper(release_after=0.5)
    rest = [0.0] * 6
    # axes: LX, LY, LT, RX, RY, RT; buttons A B X Y LB RB Back Start
    c0 = m([0.05, -0.1, -1.0, 0.0, 0.0, -1.0], [0] * 8, (0, 0), 0.0)
    assert not c0.intervening and np.all(c0.twist == 0)
    c1 = m([0.0, -0.8, -1.0, 0.5, 0.0, -1.0], [0] * 8, (0, 1), 0.1)  # stick up, right stick, d-pad up
    np.testing.assert_allclose(c1.twist, [0.8, 0, 0, 1.0, 0, -0.5])
    assert c1.intervening
    c2 = m(rest, [1, 0, 0, 0, 0, 0, 0, 1], (0, 0), 0.2)  # A + Start
    assert c2.gripper == "close" and c2.events == ["success"]
    c3 = m(rest, [0, 0, 1, 0, 0, 0, 0, 0], (0, 0), 0.3)  # X toggles control off at once
    assert not c3.intervening
    c4 = m(rest, [0, 0, 0, 0, 0, 0, 0, 0], (0, 0), 0.4)
    c5 = m(rest, [0, 0, 1, 1, 0, 0, 1, 0], (0, 0), 5.0)  # X (take, sticky), Y reset, Back failure
    assert not c4.intervening and c5.intervening and sorted(c5.events) == ["failure", "reset"]
    assert m(rest, [0] * 8, (0, 0), 9.0).intervening  # sticky without motion


def test_key_parser_and_hold_semantics():
    assert parse_keys("w\x1b[Aa\x1b[D ") == ["w", "UP", "a", "LEFT", " "]
    m = KeyMapper(first_hold=0.3, repeat_hold=0.1, release_after=0.5)
    c = m(["w"], 0.0)
    assert c.intervening and c.twist[0] == 1.0
    assert m([], 0.25).twist[0] == 1.0  # a single tap moves for first_hold
    assert m([], 0.35).twist[0] == 0.0
    # auto-repeat at 30 Hz: continuous motion, stopping repeat_hold after the last repeat
    for k in range(10):
        assert m(["s"], 1.0 + k / 30).twist[0] == -1.0
    assert m([], 1.3 + 0.05).twist[0] == -1.0
    assert m([], 1.3 + 0.15).twist[0] == 0.0
    c = m(["c", "y", "b"], 2.0)
    assert c.gripper == "close" and c.events == ["success", "reset"]
    c = m([" "], 3.0)  # released after release_after; space takes control without motion
    assert c.intervening and m([], 10.0).intervening
    assert not m([" "], 10.1).intervening
    with pytest.raises(KeyboardInterrupt):
        m(["\x03"], 11.0)


def test_keyboard_device_reads_a_real_pty_and_restores_it():
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        dev = KeyboardDevice(KeyMapper(), fd=slave, show_help=False)
        dev.connect()
        assert not termios.tcgetattr(slave)[3] & termios.ECHO
        os.write(master, b"r\x1b[Cy")
        cmd = dev.poll(0.0)
        np.testing.assert_allclose(cmd.twist, [0, -1, 1, 0, 0, 0])
        assert cmd.events == ["success"] and cmd.intervening
        assert dev.poll(0.01).events == []  # consumed
        dev.close()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_keyboard_without_a_terminal_is_a_clear_error(tmp_path):
    r, w = os.pipe()
    try:
        with pytest.raises(TeleopDeviceError, match="not a terminal.*ssh -t.*teleop.device"):
            KeyboardDevice(fd=r).connect()
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(TeleopDeviceError, match="cannot open terminal '/nonexistent/pts'"):
        KeyboardDevice(tty_path="/nonexistent/pts").connect()


def test_missing_spacemouse_and_gamepad_name_the_device_and_fix():
    with pytest.raises(TeleopDeviceError, match="SpaceMouse.*(libhidapi|plug it in|udev)"):
        SpaceMouseDevice().connect()
    with pytest.raises(TeleopDeviceError, match="gamepad: no joystick #0.*teleop.device=keyboard"):
        GamepadDevice().connect()
    with pytest.raises(TeleopDeviceError, match="not a device"):
        make_device("joystick")
