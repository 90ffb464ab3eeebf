"""The camera backend's logic, on replayed frames (no physical camera here)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from waiting import wait_for

from robot.backends.camera_stream import CameraStream
from robot.backends.realsense import (
    CameraNotFound,
    DropCounter,
    Frame,
    Intrinsics,
    RealSenseDevice,
    Recording,
    ReplayDevice,
    TimestampMapper,
    camera_info_fields,
    record,
    synthetic_recording,
)


def test_intrinsics_to_camera_info():
    intr = Intrinsics(640, 480, 600.0, 601.0, 319.5, 239.0, "plumb_bob", (0.1, -0.2, 0.0, 0.0, 0.05))
    f = camera_info_fields(intr)
    assert (f["width"], f["height"], f["distortion_model"]) == (640, 480, "plumb_bob")
    k = np.array(f["k"]).reshape(3, 3)
    np.testing.assert_allclose(k, [[600, 0, 319.5], [0, 601, 239], [0, 0, 1]])
    p = np.array(f["p"]).reshape(3, 4)
    np.testing.assert_allclose(p[:, :3], k)
    np.testing.assert_allclose(p[:, 3], 0)
    assert f["d"] == [0.1, -0.2, 0.0, 0.0, 0.05]
    half = intr.scaled(320, 240)
    assert (half.fx, half.cx) == (300.0, 159.75)


def test_hardware_clock_offset_is_the_min_latency_and_resets():
    rng = np.random.default_rng(0)
    m = TimestampMapper(window=50)
    offset, latency = 5000.0, 0.004
    errs = []
    for k in range(200):
        dev = 10.0 + k / 30
        host = dev + offset + latency + rng.exponential(0.003)
        errs.append(m.map(Frame(np.zeros((1, 1, 3), np.uint8), dev, "hardware", k), host) - (dev + offset))
    # after the window fills, the stamp is the device time plus (offset + minimum latency)
    assert np.all(np.abs(np.array(errs[50:]) - latency) < 0.002)
    # the device clock restarts (a replug): the estimate follows at once instead of drifting
    s = m.map(Frame(np.zeros((1, 1, 3), np.uint8), 0.5, "hardware", 0), 10_000.0)
    assert m.resets == 1 and abs(s - 10_000.0) < 1e-9


def test_global_and_system_stamps_pass_through():
    m = TimestampMapper()
    assert m.map(Frame(np.zeros((1, 1, 3), np.uint8), 1.7e9, "global", 3), 1.7e9 + 0.01) == 1.7e9
    with pytest.raises(Exception, match="unknown timestamp domain"):
        m.map(Frame(np.zeros((1, 1, 3), np.uint8), 1.0, "bogus", 3), 1.0)


def test_drop_counter_from_numbers_and_times():
    d = DropCounter(fps=30)
    lost = [d.update(n, n / 30) for n in (0, 1, 2, 5, 6, 10)]
    assert lost == [0, 0, 0, 2, 0, 3] and d.dropped == 5
    d.reset()
    assert d.update(0, 100.0) == 0  # a counter restart after reconnect is not a drop
    t = DropCounter(fps=10)
    assert [t.update(-1, s) for s in (0.0, 0.1, 0.4)] == [0, 0, 2]


def test_recording_roundtrip(tmp_path):
    src = synthetic_recording(n=5, depth=True, skip=(2,))
    rec = record(ReplayDevice("front", src, realtime=False), 4)  # capture a (replayed) device
    assert [f.number for f in rec.frames] == [0, 1, 3, 4] and rec.intrinsics == src.intrinsics
    rec.save(tmp_path / "cam.npz")
    back = Recording.load(tmp_path / "cam.npz")
    assert back.intrinsics == rec.intrinsics
    assert [f.number for f in back.frames] == [0, 1, 3, 4]
    np.testing.assert_array_equal(back.frames[2].color, rec.frames[2].color)
    assert back.frames[0].depth.dtype == np.uint16


def _collect(stream_dev: ReplayDevice, fps: float = 200.0):
    got: list[tuple[Frame, float]] = []
    ev = threading.Event()

    def on_frame(frame, stamp):
        got.append((frame, stamp))
        ev.set()

    s = CameraStream(stream_dev, on_frame, fps=fps, read_timeout=0.05, disconnect_after=2, reconnect_period=0.05)
    return s, got


def test_stream_counts_drops_and_reconnects_after_unplug():
    rec = synthetic_recording(n=20, fps=200.0, skip=(3, 4, 11))
    dev = ReplayDevice("front", rec, fps=200.0, loop=True)
    s, got = _collect(dev)
    s.start()
    try:
        assert wait_for(lambda: len(got) >= 17)
        st = s.stats()
        assert st.connected and st.dropped >= 3 and st.disconnects == 0
        # frames are stamped in host time, increasing
        stamps = [t for _, t in got[:17]]
        assert np.all(np.diff(stamps) > 0) and abs(stamps[-1] - time.time()) < 1.0
        dev.unplug()
        assert wait_for(lambda: not s.stats().connected)
        n_unplugged = len(got)
        time.sleep(0.2)  # reconnect attempts fail while unplugged, the thread keeps going
        st = s.stats()
        assert st.disconnects == 1 and "not connected" in st.last_error and len(got) == n_unplugged
        dev.replug()
        assert wait_for(lambda: s.stats().connected and len(got) > n_unplugged + 5)
        assert s.stats().opens == 2 and dev.opens == 2
    finally:
        s.stop()
    assert not dev.opened


def test_stream_treats_repeated_timeouts_as_disconnect():
    rec = synthetic_recording(n=3, fps=200.0)
    dev = ReplayDevice("wrist", rec, fps=200.0, loop=False)
    s, got = _collect(dev)
    s.start()
    try:
        # after the 3 frames, reads time out; 2 timeouts in a row -> disconnect + reopen (replay restarts)
        assert wait_for(lambda: s.stats().disconnects >= 1 and len(got) >= 6)
    finally:
        s.stop()


def test_missing_realsense_serial_lists_connected_serials():
    dev = RealSenseDevice("front", serial="123456789")
    with pytest.raises(CameraNotFound, match=r"'123456789' is not connected \(connected serials: none\)"):
        dev.open()
