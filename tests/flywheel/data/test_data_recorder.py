"""The recorder core: latest-at-or-before sampling, actions as commanded (measured and commanded origin),
events, drops."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.data import EpisodeStore
from flywheel.data.recorder import Recorder, RecorderConfig, Stream
from rig.geometry import quat_conj, quat_mul, quat_to_rotvec, rotvec_to_quat
from robot.ros.observer import TimeBuffer

CFG = RecorderConfig(cameras=["front"], image_size=16, control_hz=10.0)
Q0 = np.array([1.0, 0.0, 0.0, 0.0])


def test_stream_latest_at_or_before():
    s = Stream(keep_s=1.0)
    for t in [0.0, 0.1, 0.2, 0.15]:  # one out of order
        s.push(t, t)
    assert s.at(-0.01) is None
    assert s.at(0.1) == (0.1, 0.1) and s.at(0.17) == (0.15, 0.15) and s.at(9) == (0.2, 0.2)
    for i in range(1000):
        s.push(1 + i * 0.002, i)
    assert len(s.t) < 1000 and s.at(2.998) == (pytest.approx(2.998), 999)
    assert Stream is TimeBuffer  # one buffer for the recorder, the env adapter and the policy node


# what _feed's command is recorded as: its step per tick (commanded origin), or the command at the end of the
# tick relative to the arm at its start (measured origin): the step plus the command's lead of 4 mm / 0.02 rad
X_STEP = {"commanded": 0.01 / CFG.max_translation, "measured": 0.014 / CFG.max_translation}
RZ_STEP = {"commanded": 0.05 / CFG.max_rotation, "measured": 0.07 / CFG.max_rotation}


def _feed(rec: Recorder, t0: float, n_ticks: int, intervene_from: int = 99, rate: float = 100.0):
    """State at `rate` Hz, images at 30 Hz; the command leads the arm by 4 mm in x and 0.02 rad about z and
    moves 1 cm in x and 0.05 rad about z per tick."""
    dt = 1.0 / CFG.control_hz
    ts = np.arange(t0, t0 + n_ticks * dt, 1.0 / rate)
    for t in ts:
        x = 0.4 + 0.1 * (t - t0)
        rec.push("joint_states", t, (np.full(7, t - t0), np.zeros(7)))
        rec.push("ee_pose", t, (np.array([x, 0.0, 0.3]), quat_mul(rotvec_to_quat([0, 0, 0.5 * (t - t0) - 0.02]), Q0)))
        rec.push("ee_wrench", t, np.arange(6.0))
        rec.push("gripper", t, 0.04)
        rec.push("command", t, (np.array([x + 0.004, 0.0, 0.3]), quat_mul(rotvec_to_quat([0, 0, 0.5 * (t - t0)]), Q0)))
        rec.push("gripper_command", t, 0.08)
    for t in np.arange(t0, t0 + n_ticks * dt, 1 / 30):
        rec.push("images/front", t, np.full((48, 64, 3), int((t - t0) * 100) % 255, np.uint8))
    statuses = []
    for k in range(n_ticks):
        rec.push("intervening", t0 + k * dt, k >= intervene_from)
        statuses.append(rec.tick(t0 + k * dt + 1e-4))
    return statuses


@pytest.mark.parametrize("origin", ["measured", "commanded"])
def test_records_an_episode_with_actions_interventions_and_labels(tmp_path, origin):
    store = EpisodeStore(tmp_path / "s.zarr", "a", CFG.rig_spec())
    rec = Recorder(store, episode_meta={"task": "push", "source": "policy"}, action_origin=origin).connect()
    assert rec.tick(0.0) == "idle"
    rec.on_event("start", instruction="push it")
    assert _feed(rec, 100.0, 12, intervene_from=5) == ["recorded"] * 12
    rec.on_event("success")
    rec.on_event("start")
    _feed(rec, 200.0, 4)
    rec.on_event("abort")  # discarded
    rec.on_event("start")
    _feed(rec, 300.0, 3)
    rec.on_event("failure")
    assert rec.wait_idle()
    rec.close()
    assert store.num_episodes == 2 and rec.counters["episodes"] == 2 and rec.counters["aborted"] == 1
    ep = store.episode(0)
    r = ep.record
    assert (r.task, r.source, r.success, r.instruction, len(ep)) == ("push", "policy", True, "push it", 12)
    a = ep["action"]
    np.testing.assert_allclose(a[:, 0], X_STEP[origin], atol=1e-5)  # 1 cm (+ 4 mm) / 2 cm per tick
    np.testing.assert_allclose(a[:, 5], RZ_STEP[origin], atol=1e-5)  # also the last step (from its rate)
    np.testing.assert_allclose(a[:, 6], 1.0)  # gripper command fully open
    np.testing.assert_array_equal(ep["intervention"], [False] * 5 + [True] * 7)
    np.testing.assert_array_equal(ep["reward"], [0] * 11 + [1])  # success reward on the last step
    # latest-at-or-before: the state at tick k is the 100 Hz sample at k * 0.1 s, not after it
    np.testing.assert_allclose(ep["state/joint_pos"][:, 0], np.arange(12) * 0.1, atol=1e-4)
    np.testing.assert_allclose(ep["state/ee_wrench"][3], np.arange(6.0))
    assert ep["images/front"].shape == (12, 16, 16, 3)  # resized to the spec
    np.testing.assert_allclose(ep["timestamp"], 100.0 + np.arange(12) * 0.1 + 1e-4)
    assert store.record(1).success is False and len(store.episode(1)) == 3
    store.close()


def test_missing_or_stale_streams_skip_ticks(tmp_path):
    store = EpisodeStore(tmp_path / "s.zarr", "a", CFG.rig_spec())
    rec = Recorder(store, max_age=0.2)
    rec.start_episode()
    assert rec.tick(1.0) == "skipped" and rec.last_skip.startswith("missing:")
    _feed(rec, 0.0, 1)
    assert rec.tick(5.0) == "skipped" and rec.last_skip.startswith("stale:")
    assert rec.counters["skipped_missing"] == 1 and rec.counters["skipped_stale"] == 1


def test_full_queue_drops_steps_and_counts_them(tmp_path):
    store = EpisodeStore(tmp_path / "s.zarr", "a", CFG.rig_spec())
    rec = Recorder(store, queue_size=3)  # the writer thread is not running yet: the queue fills
    rec.start_episode(task="t")
    statuses = _feed(rec, 0.0, 6)
    assert statuses == ["recorded"] * 3 + ["dropped"] * 3 and rec.counters["dropped"] == 3
    rec.end_episode(True)
    rec.connect()
    assert rec.wait_idle()
    rec.close()
    assert store.num_episodes == 1 and len(store.episode(0)) == 3


def _closed_loop(tmp_path, source: str, a: np.ndarray, phase: float, n: int = 12, rate: float = 500.0,
                 tau: float = 0.05, origin: str = "measured") -> tuple[np.ndarray, np.ndarray]:
    """The rig in miniature: the franka node's safety filter at ``rate`` Hz, an arm lagging its command (``tau``,
    position and orientation), and a ``source`` commanding spec action ``a`` every tick: a policy (a target per
    0.1 s tick, stepped from the ``origin`` pose, measured or commanded; ``a[k]`` at its tick k when ``a`` is 2-D)
    or an operator (a twist of ``a`` per tick integrated into its target every filter tick). The recorder (same
    ``origin``) ticks ``phase`` s after the policy. Returns (recorded actions, measured positions)."""
    from rig.safety import SafetyConfig, SafetyFilter
    from rig.safety_math import apply_twist

    cfg = RecorderConfig(cameras=[], control_hz=10.0)
    spec = cfg.rig_spec()
    store = EpisodeStore(tmp_path / f"{source}-{origin}-{phase:.3f}.zarr", "a", spec)
    rec = Recorder(store, action_origin=origin).connect()
    dt, period = 1.0 / rate, 1.0 / cfg.control_hz
    f = SafetyFilter(SafetyConfig(), dt)
    meas, measq = np.array([0.45, -0.05, 0.3]), Q0
    f.reset(meas, Q0)
    target = (meas, Q0)
    twist = (a[..., :3] * spec.action.max_translation * cfg.control_hz, a[..., 3:6] * spec.action.max_rotation * cfg.control_hz)
    t0, next_policy, next_rec, recorded, kp = 1000.0, 1000.0, 1000.0 + phase, 0, 0
    rec.start_episode()
    for i in range(int((n + 3) * period * rate)):
        now = t0 + i * dt
        if source == "policy" and now >= next_policy - 1e-9:
            start = f.applied_pose if origin == "commanded" else (meas, measq)
            tpos, tquat, _ = spec.action.to_target(a[kp] if a.ndim == 2 else a, *start)
            f.set_target(tpos, tquat, now)
            rec.push("target", now, (tpos, tquat))
            next_policy += period
            kp += 1
        elif source == "operator":  # the twist integrated on the operator's target, which the filter follows
            target = apply_twist(*target, *twist, dt)
            f.set_target(*target, now)
        applied = f.step(now, dt)
        meas = meas + (applied.pos - meas) * dt / tau
        measq = quat_mul(rotvec_to_quat(quat_to_rotvec(quat_mul(applied.quat, quat_conj(measq))) * dt / tau), measq)
        for k, v in (("joint_states", (np.zeros(7), np.zeros(7))), ("ee_pose", (meas, measq)),
                     ("ee_wrench", np.zeros(6)),
                     ("gripper", 0.08), ("command", (applied.pos, applied.quat)), ("gripper_command", 0.08)):
            rec.push(k, now, v)
        if now >= next_rec - 1e-9 and recorded < n:
            assert rec.tick(next_rec) == "recorded"
            next_rec += period
            recorded += 1
    rec.end_episode(None)
    assert rec.wait_idle()
    rec.close()
    ep = store.episode(0)
    return ep["action"], ep["state/ee_pos"]


# the operator under the measured origin: the command relative to where the arm was, i.e. the twist's step plus
# the arm's tracking lag, v * (tau - dt) for this arm model (0.048 s of 0.1 s per tick)
LAG = {"measured": 1.0 + 0.048 / 0.1, "commanded": 1.0}


@pytest.mark.parametrize("origin", ["measured", "commanded"])
@pytest.mark.parametrize("source", ["policy", "operator"])
def test_recorded_action_is_the_commanded_one_at_any_timer_phase(tmp_path, source, origin):
    """A policy's 0.5 is recorded as 0.5 (not the tracking lag), whatever the recorder's phase (#17); an operator's
    twist as its step (commanded origin) or its command relative to the lagging arm (measured origin)."""
    a = np.array([0.5, -0.3, 0.0, 0.0, 0.0, 0.4, 1.0], np.float32)
    want = a.copy()
    if source == "operator":
        want[:6] *= LAG[origin]
    worst = 0.0
    for phase in np.arange(0.0, 0.1, 0.0125):
        acts, pos = _closed_loop(tmp_path, source, a, float(phase), origin=origin)
        assert acts.shape == (12, 7)
        # the start from rest: the filter's acceleration limit gives the operator's first step a little less;
        # measured, the arm's lag builds up over its first two steps (tau = 50 ms), recorded as less
        if source == "operator" and origin == "measured":
            worst = max(worst, float(np.abs(acts[2:] - want).max()))
            assert np.all(np.abs(acts[:2, :6]) <= np.abs(want[:6]) + 0.02)
        else:
            worst = max(worst, float(np.abs(acts[1:] - want).max()), float(np.abs(acts[0] - want).max()) - 0.05)
        # the arm moves a * 2 cm per tick (after the start), lagging its command by about v * tau = 5 mm; a
        # measured-origin policy's arm less: each step starts where the arm is, ~78 % of the way to the last target
        moved = np.diff(pos[4:, :2], axis=0) / 0.02
        scale = 0.784 if (source, origin) == ("policy", "measured") else 1.0
        np.testing.assert_allclose(moved, np.tile(a[:2] * scale, (7, 1)), atol=0.02)
    assert worst <= 0.02, f"recorded actions differ from the commanded ones by {worst:.4f} (limit 0.02)"


@pytest.mark.parametrize("origin", ["measured", "commanded"])
def test_a_policys_changing_actions_are_recorded_each_at_its_tick_at_any_phase(tmp_path, origin):
    """The filter ramps each target in over part of a tick: each step still counts whole for its own tick."""
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(-0.4, 0.4, (16, 3)), rng.uniform(-0.25, 0.25, (16, 3)), np.ones((16, 1))], 1)
    a = a.astype(np.float32)  # small enough for the filter to finish each ramp within the tick (see settled())
    for phase in np.arange(0.005, 0.1, 0.0125):
        acts, _ = _closed_loop(tmp_path, "policy", a, float(phase), origin=origin)
        # the recorder's tick j (phase s after the policy's tick j) sees the policy's step j + 1
        err = float(np.abs(acts - a[1:13]).max())
        assert err <= 0.02, f"phase {phase:.4f}: recorded differs from commanded by {err:.4f}"


def _replay(path, acts: np.ndarray) -> np.ndarray:
    """Measured positions of a measured-origin policy replaying ``acts`` open loop (recorder at phase 0)."""
    path.mkdir()
    return _closed_loop(path, "policy", np.concatenate([acts, acts[-1:].repeat(4, 0)]), 0.0)[1]


def test_replaying_a_recorded_policy_episode_reproduces_it_and_an_operators_up_to_the_arms_lag(tmp_path):
    """Measured origin: a policy's episode replays exactly; an operator's recorded command relative to the arm
    replays its path up to the difference between the arm's lag under a twist and under stepped targets."""
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.uniform(-0.4, 0.4, (16, 3)), rng.uniform(-0.25, 0.25, (16, 3)), np.ones((16, 1))], 1)
    acts, pos = _closed_loop(tmp_path, "policy", a.astype(np.float32), 0.0)
    # the recorder at phase 0 sees the policy's next step (see above): its step 0 is the policy's first action
    dev = np.linalg.norm(_replay(tmp_path / "replay-policy", np.concatenate([a[:1], acts])) - pos, axis=1)
    assert dev.max() <= 2e-4, dev
    op = np.array([0.5, -0.3, 0.0, 0.0, 0.0, 0.4, 1.0], np.float32)
    acts, pos = _closed_loop(tmp_path, "operator", op, 0.0)
    dev = np.linalg.norm(_replay(tmp_path / "replay-operator", acts) - pos, axis=1)
    moved = float(np.linalg.norm(pos[-1] - pos[0]))
    # this arm model lags 4.8 mm behind a twist but ~3.6 mm behind a stepped target: ~12 % more travel
    assert moved > 0.1 and dev[-1] <= 0.15 * moved, (dev, moved)


def test_recorder_skips_ticks_and_steps_without_a_command(tmp_path):
    store = EpisodeStore(tmp_path / "s.zarr", "a", CFG.rig_spec())
    rec = Recorder(store).connect()
    rec.start_episode()
    assert _feed(rec, 0.0, 5) == ["recorded"] * 5  # steps 0 and 1 complete by the 5th tick (0.4 s)
    rec.streams["command"].clear()  # the franka node stopped applying (e.g. homing)
    assert rec.tick(0.55) == "skipped" and rec.last_skip == "missing:command"
    rec.end_episode(None)  # steps 2, 3 and 4 have no command at their ends: dropped, counted
    assert rec.wait_idle()
    rec.close()
    a = store.episode(0)["action"]
    np.testing.assert_allclose(a[:, 0], X_STEP["measured"], atol=1e-5)
    assert len(a) == 2 and rec.counters["skipped_missing"] == 4 and "command" in rec.last_skip


def test_an_unknown_action_origin_is_refused(tmp_path):
    store = EpisodeStore(tmp_path / "s.zarr", "a", CFG.rig_spec())
    with pytest.raises(ValueError, match="action_origin 'target'"):
        Recorder(store, action_origin="target")
    assert RecorderConfig().action_origin == Recorder(store).action_origin == "measured"
