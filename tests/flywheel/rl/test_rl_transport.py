"""Actor/learner transport on loopback: auth, bounded queues, reconnects, and a two-actor run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from rl_toy_envs import LineEnv

from flywheel.rl.actor import Actor
from flywheel.rl.learner import Learner, LearnerConfig, weights_from_bytes, weights_to_bytes
from flywheel.rl.loops import run_actor, serve
from flywheel.rl.sac import SACAgent, SACConfig, obs_shapes_of
from flywheel.rl.transport import (
    ActorEndpoint,
    AuthError,
    LearnerEndpoint,
    TransportConfig,
    decode,
    encode,
    free_ports,
    resolve_token,
)


@pytest.fixture
def tcfg() -> TransportConfig:
    p1, p2 = free_ports(2)
    return TransportConfig(transitions_port=p1, weights_port=p2, token="s3cret", queue_size=8)


def _recv_until(ep: LearnerEndpoint, n: int, timeout: float = 5.0) -> list[dict]:
    got: list[dict] = []
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        got += ep.recv(timeout_ms=50)
    return got


def test_codec_round_trip_and_auth():
    key = b"k"
    msg = {"type": "t", "a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([True, False]),
           "u8": np.zeros((2, 4, 4, 3), np.uint8), "n": 3, "s": "x", "raw": b"\x00\x01", "sc": np.float32(2.5)}
    out = decode(encode(msg, key), key)
    for k in ("a", "b", "u8"):
        np.testing.assert_array_equal(out[k], msg[k])
        assert out[k].dtype == msg[k].dtype
    assert out["n"] == 3 and out["s"] == "x" and out["raw"] == b"\x00\x01" and out["sc"] == 2.5
    with pytest.raises(AuthError):
        decode(encode(msg, b"other"), key)
    frame = bytearray(encode(msg, key))
    frame[-1] ^= 1  # tampered payload
    with pytest.raises(AuthError):
        decode(bytes(frame), key)
    with pytest.raises(TypeError, match="object"):
        encode({"o": np.array([object()])}, key)
    with pytest.raises(ValueError, match="token"):
        resolve_token("")


def test_round_trip_and_wrong_token_rejected(tcfg):
    with LearnerEndpoint(tcfg) as learner, ActorEndpoint(tcfg, "good") as good, \
            ActorEndpoint(TransportConfig(**{**tcfg.__dict__, "token": "wrong"}), "evil") as evil:
        time.sleep(0.2)
        evil.send({"type": "transitions", "batch": {"x": np.ones(3)}})
        good.send({"type": "transitions", "batch": {"x": np.arange(3)}})
        got = _recv_until(learner, 1)
        time.sleep(0.2)
        got += learner.recv(timeout_ms=100)
        assert len(got) == 1 and got[0]["actor"] == "good"
        np.testing.assert_array_equal(got[0]["batch"]["x"], np.arange(3))
        assert learner.rejected == 1 and learner.forged == 1
        # weights go the other way, and only authentic ones are taken
        w = None
        end = time.monotonic() + 5
        while w is None and time.monotonic() < end:
            learner.publish_weights(7, b"weights-bytes")
            w = good.poll_weights(timeout_ms=100)
        assert w is not None and w["version"] == 7 and w["data"] == b"weights-bytes"
        end = time.monotonic() + 5
        while evil.rejected == 0 and time.monotonic() < end:
            learner.publish_weights(8, b"x")
            assert evil.poll_weights(timeout_ms=100) is None  # never an unauthenticated message
        assert evil.rejected >= 1


def test_outbox_is_bounded_while_the_learner_is_away(tcfg):
    with ActorEndpoint(tcfg) as actor:  # nobody listening
        for i in range(20):
            actor.send({"type": "transitions", "batch": {"i": np.array([i])}})
        assert len(actor.outbox) == tcfg.queue_size
        assert actor.dropped == 20 - tcfg.queue_size
        with LearnerEndpoint(tcfg) as learner:  # the learner comes up: the newest messages arrive
            end = time.monotonic() + 5
            while actor.outbox and time.monotonic() < end:
                actor.flush()
                time.sleep(0.05)
            got = _recv_until(learner, tcfg.queue_size)
            assert [int(m["batch"]["i"][0]) for m in got] == list(range(20 - tcfg.queue_size, 20))


def test_an_actor_that_closes_right_after_sending_delivers_what_it_sent(tcfg):
    """The end of an actor's run: its last messages, accepted by ZMQ but still in flight, are not dropped."""
    big = np.zeros((1, 256, 256, 3), np.uint8)  # a frame per message: takes a moment on the wire
    with LearnerEndpoint(tcfg) as learner:
        for round_ in range(3):
            actor = ActorEndpoint(tcfg, f"a{round_}").connect()
            for i in range(tcfg.queue_size):
                actor.send({"type": "transitions", "batch": {"i": np.array([i]), "img": big}})
            end = time.monotonic() + 5
            while actor.outbox and time.monotonic() < end:  # as run_actor drains before it returns
                actor.flush()
                time.sleep(0.01)
            assert not actor.outbox  # all accepted by ZMQ
            actor.close()
            got = [m for m in _recv_until(learner, tcfg.queue_size) if m["actor"] == f"a{round_}"]
            assert [int(m["batch"]["i"][0]) for m in got] == list(range(tcfg.queue_size))


def test_actor_reconnects_after_learner_restart(tcfg):
    with ActorEndpoint(tcfg, "a") as actor:
        with LearnerEndpoint(tcfg) as first:
            time.sleep(0.2)
            actor.send({"type": "transitions", "batch": {"n": np.array([1])}})
            assert [int(m["batch"]["n"][0]) for m in _recv_until(first, 1)] == [1]
        time.sleep(0.5)  # the learner is down (a restart takes a while): messages wait in the outbox
        actor.send({"type": "transitions", "batch": {"n": np.array([2])}})
        assert len(actor.outbox) == 1
        with LearnerEndpoint(tcfg) as second:
            end = time.monotonic() + 10
            got: list[dict] = []
            while not got and time.monotonic() < end:
                actor.flush()
                got = second.recv(timeout_ms=100)
            assert [int(m["batch"]["n"][0]) for m in got] == [2]
            actor.send({"type": "transitions", "batch": {"n": np.array([3])}})
            assert [int(m["batch"]["n"][0]) for m in _recv_until(second, 1)] == [3]
            # and the weights subscription reconnected too
            w = None
            end = time.monotonic() + 10
            while w is None and time.monotonic() < end:
                second.publish_weights(1, b"w")
                w = actor.poll_weights(timeout_ms=100)
            assert w is not None


def test_weights_bytes_round_trip():
    env = LineEnv()
    cfg = SACConfig(hidden_dims=[16], arm_dims=[0])
    a, b = SACAgent(cfg, obs_shapes_of(env.observation_space)), SACAgent(cfg, obs_shapes_of(env.observation_space))
    weights_from_bytes(b, weights_to_bytes(a))
    for k, v in a.policy_state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not torch.equal(a.critic.net[0].weight, b.critic.net[0].weight)  # critics stay on the learner


@pytest.mark.slow
def test_two_actors_feed_one_learner(tcfg):
    torch.manual_seed(0)
    env = LineEnv(horizon=10)
    cfg = SACConfig(hidden_dims=[32], arm_dims=[0], batch_size=32)
    shapes = obs_shapes_of(env.observation_space)
    learner = Learner(SACAgent(cfg, shapes), LearnerConfig(warmup_steps=20))
    errors: list[BaseException] = []

    def actor_main(i: int) -> None:
        try:
            with ActorEndpoint(tcfg, f"actor{i}") as ep:
                run_actor(Actor(LineEnv(horizon=10), SACAgent(cfg, shapes), seed=i, name=f"actor{i}"), ep, 150,
                          send_every=25, wait_for_weights_s=5)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    with LearnerEndpoint(tcfg) as ep:
        threads = [threading.Thread(target=actor_main, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        serve(learner, ep, total_steps=300, weights_period_s=0.2, idle_timeout_s=20, progress=False)
        for t in threads:
            t.join(30)
    assert not errors
    assert learner.env_steps == 300 and len(learner.online) == 300
    actors = {h["actor"] for h in learner.history if h["kind"] == "episode"}
    assert actors == {"actor0", "actor1"}
    assert learner.update_calls == 300 - 20  # one update call per received env step after warm-up


def test_actor_paces_its_steps_like_a_control_loop():
    class _Endpoint:  # records what the actor ships; no learner
        def __init__(self):
            self.times: list[float] = []
            self.outbox: list = []

        def flush(self):
            pass

        def poll_weights(self, timeout_ms=0):
            return None

        def send(self, msg):
            self.times.append(time.monotonic())

    env = LineEnv(horizon=100)
    cfg = SACConfig(hidden_dims=[8], arm_dims=[0], batch_size=8)
    ep = _Endpoint()
    t0 = time.monotonic()
    run_actor(Actor(env, SACAgent(cfg, obs_shapes_of(env.observation_space))), ep, 20, send_every=5,
              wait_for_weights_s=0, rate_hz=50.0)
    assert len(ep.times) == 4
    # 20 steps at 50 Hz cannot finish before 19 periods have passed (a lower bound: sleeping only adds)
    assert ep.times[-1] - t0 >= 19 / 50.0


class _Attacker:
    """A raw PUSH socket on the learner's transitions port: sends whatever frames it is given."""

    def __init__(self, tcfg: TransportConfig):
        import zmq

        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(f"tcp://{tcfg.host}:{tcfg.transitions_port}")
        self.key = resolve_token(tcfg.token)

    def frame(self, x: float, *, actor="a0", session="s1", epoch=1, seq=1, sent=None, key=None, **over):
        msg = {"type": "transitions", "actor": actor, "session": session, "epoch": epoch, "seq": seq,
               "sent": time.time_ns() if sent is None else sent, "batch": {"x": np.array([x])}, **over}
        return encode({k: v for k, v in msg.items() if v is not _DROP}, key or self.key)

    def send(self, *frames: bytes) -> None:
        for f in frames:
            self.push.send(f)

    def close(self) -> None:
        self.push.close(0)
        self.ctx.term()


_DROP = object()


def _drain(learner: LearnerEndpoint, n: int, settle: float = 0.3) -> list[dict]:
    got = _recv_until(learner, n)
    time.sleep(settle)
    return got + learner.recv(timeout_ms=100)


def test_replayed_same_and_older_sessions_are_refused(tcfg):
    """Copies, old counters, older sessions (even ones this learner never saw) and stale stamps are refused."""
    with LearnerEndpoint(tcfg) as learner:
        att = _Attacker(tcfg)
        try:
            first = att.frame(1.0, session="s5", epoch=500, seq=1)
            att.send(first, first,                                   # a copy
                     att.frame(2.0, session="s5", epoch=500, seq=2),
                     att.frame(3.0, session="s5", epoch=500, seq=1),  # an old counter
                     att.frame(4.0, session="s4", epoch=400, seq=9),  # an older session never seen here
                     att.frame(5.0, session="s6", epoch=600, seq=1),  # the sender restarted: accepted
                     att.frame(6.0, session="s5", epoch=500, seq=3),  # the superseded session
                     att.frame(7.0, session="s6", epoch=600, seq=2),
                     att.frame(8.0, session="s9", epoch=900, seq=1, sent=time.time_ns() - 10**12),  # stale
                     att.frame(9.0, session="s9", epoch=900, seq=1, sent=time.time_ns() + 10**12))  # future
            got = _drain(learner, 4)
            # the live session goes on, and a second sender is independent of the first
            att.send(att.frame(10.0, session="s6", epoch=600, seq=3), att.frame(11.0, actor="b", epoch=1))
            got += _drain(learner, 2)
        finally:
            att.close()
    assert [float(m["batch"]["x"][0]) for m in got] == [1, 2, 5, 7, 10, 11]
    assert learner.replayed == 6 and learner.rejected == 6 and learner.received == 6


_STATS = {"episode": 1, "length": 10, "return": 1.0, "success": True, "intervention_rate": 0.0, "env_steps": 10}


def test_forged_malformed_and_oversized_frames_are_refused_and_counted(tcfg):
    """Over real ZeroMQ: the learner survives every bad frame, counts it, and keeps taking good ones."""
    tcfg.max_frame_bytes = 1 << 20
    with LearnerEndpoint(tcfg) as learner:
        att = _Attacker(tcfg)
        try:
            seq = iter(range(1, 100))
            good = [att.frame(float(i), seq=next(seq)) for i in range(2)]
            good.append(att.frame(2.0, seq=next(seq), episodes=[{**_STATS, "extra": {"reward_missed": 1.0}}]))
            forged = [att.frame(9.0, seq=50, key=b"guess"), b"short", b"\x00" * 40]
            malformed = [
                att.frame(0.0, seq=next(seq), batch=_DROP),                           # no batch
                att.frame(0.0, seq=next(seq), batch=[1, 2]),                          # wrong type
                att.frame(0.0, seq=next(seq), batch={"x": np.array(["a"])}),          # not numeric
                att.frame(0.0, seq=next(seq), batch={"x": np.array([np.nan])}),       # not finite
                att.frame(0.0, seq=next(seq), batch={"x": np.zeros(2), "y": np.zeros(3)}),  # ragged
                att.frame(0.0, seq=next(seq), episodes=[{"episode": "one"}]),         # bad stats
                att.frame(0.0, seq=next(seq), episodes=[{**_STATS, "extra": {"fp": float("nan")}}]),  # bad extra
                att.frame(0.0, seq=next(seq), episodes=[{**_STATS, "extra": {f"k{i}": 0.0 for i in range(99)}}]),
                att.frame(0.0, seq=next(seq), episodes=[{**_STATS, "extra": ["fp", 1.0]}]),
                att.frame(0.0, seq=next(seq), episodes=[{**_STATS, "extra": {"fp": 2**60}}]),  # not exact as a float
                att.frame(0.0, seq=next(seq), type="weights"),                        # wrong type
                att.frame(0.0, seq="7"),                                              # counter not an int
                encode([1, 2, 3], att.key),                                           # not a map
                encode({"actor": 5}, att.key),                                        # sender not a string
            ]
            att.send(good[0], *forged, *malformed, good[1])
            got = _drain(learner, 2)
            assert learner.forged == 3 and learner.malformed == len(malformed) and learner.replayed == 0
            assert learner.disconnects == 0
            att.send(att.frame(0.0, seq=next(seq), pad=b"\x00" * (2 << 20)))       # over the 1 MiB cap
            end = time.monotonic() + 5
            while learner.disconnects == 0 and time.monotonic() < end:
                got += learner.recv(timeout_ms=50)
            assert learner.disconnects == 1  # ZeroMQ dropped the connection before buffering the frame
            att.send(good[2])  # ZeroMQ reconnected the sender: good frames flow again
            got += _drain(learner, 1)
        finally:
            att.close()
    assert [float(m["batch"]["x"][0]) for m in got] == [0.0, 1.0, 2.0]
    assert learner.received == 3


def test_the_learner_loop_survives_signed_garbage(tcfg):
    """serve() keeps running on a batch whose fields do not fit its buffers, and counts it."""
    env = LineEnv(horizon=10)
    cfg = SACConfig(hidden_dims=[8], arm_dims=[0], batch_size=8)
    learner = Learner(SACAgent(cfg, obs_shapes_of(env.observation_space)), LearnerConfig())
    with LearnerEndpoint(tcfg) as ep:
        att = _Attacker(tcfg)
        try:
            att.send(att.frame(0.0, seq=1))  # well formed, but not a transition batch of this agent
            serve(learner, ep, total_steps=1, weights_period_s=10, idle_timeout_s=1.0, progress=False)
        finally:
            att.close()
    assert ep.malformed == 1 and ep.received == 0 and learner.env_steps == 0


def test_weights_of_an_older_learner_session_never_roll_an_actor_back():
    from flywheel.rl.transport import MalformedError, ReplayError, _ReplayGuard

    g = _ReplayGuard(window_s=60)
    now = time.time_ns()

    def w(session, epoch, version, sent=now):
        return {"session": session, "epoch": epoch, "version": version, "sent": sent}

    g.check("", w("L1", 10, 5), "version", strict=False, now_ns=now)
    g.check("", w("L1", 10, 5), "version", strict=False, now_ns=now)  # the periodic republish
    g.check("", w("L1", 10, 9), "version", strict=False, now_ns=now)
    with pytest.raises(ReplayError, match="version 6 after 9"):
        g.check("", w("L1", 10, 6), "version", strict=False, now_ns=now)
    with pytest.raises(ReplayError, match="older than the newest"):  # a session never seen, but older
        g.check("", w("L0", 5, 100), "version", strict=False, now_ns=now)
    g.check("", w("L2", 20, 0), "version", strict=False, now_ns=now)  # a restarted learner
    with pytest.raises(ReplayError, match="older than the newest"):
        g.check("", w("L1", 10, 10), "version", strict=False, now_ns=now)
    with pytest.raises(ReplayError, match="window"):
        g.check("", w("L3", 30, 0, sent=now - 61 * 10**9), "version", strict=False, now_ns=now)
    with pytest.raises(MalformedError):
        g.check("", {"session": "L4", "version": 1}, "version", strict=False, now_ns=now)


def test_actor_takes_weights_and_refuses_forged_and_older_ones(tcfg):
    with LearnerEndpoint(tcfg) as old, ActorEndpoint(tcfg, "a0") as actor:
        old_frame = encode(old._stamp({"type": "weights", "version": 50, "data": b"old"}), old._key)
    time.sleep(0.01)
    with LearnerEndpoint(tcfg) as learner, ActorEndpoint(tcfg, "a0") as actor:
        end = time.monotonic() + 5
        msg = None
        while msg is None and time.monotonic() < end:
            learner.publish_weights(3, b"w")
            msg = actor.poll_weights(timeout_ms=100)
        assert msg is not None and msg["session"] == learner.session and msg["version"] == 3
        # a recorded frame of the learner's previous session (a higher version!) and a forged one
        for frame, counter in ((old_frame, "replayed"), (b"\x01" * 64, "forged")):
            before = getattr(actor, counter)
            end = time.monotonic() + 5
            while getattr(actor, counter) == before and time.monotonic() < end:
                learner._pub.send(frame)
                assert actor.poll_weights(timeout_ms=100) is None
            assert getattr(actor, counter) == before + 1


def test_frame_cap_holds_the_largest_legitimate_messages():
    """The cap from frame_cap passes a real actor message of send_every transitions and the real weights."""
    from flywheel.rl.buffers import stack_transitions, transition_layout
    from flywheel.rl.transport import frame_cap

    env = LineEnv(horizon=10)
    cfg = SACConfig(hidden_dims=[64, 64], arm_dims=[0])
    agent = SACAgent(cfg, obs_shapes_of(env.observation_space))
    actor = Actor(env, agent)
    trs = [actor.step()[0] for _ in range(50)]
    key = b"k"
    msg = {"type": "transitions", "batch": stack_transitions(trs), "actor": "actor0", "session": "0" * 16,
           "epoch": time.time_ns(), "sent": time.time_ns(), "seq": 1, "weights_version": 10**9,
           "episodes": [{"episode": 1, "length": 10, "return": 1.0, "success": True, "intervention_rate": 0.0,
                         "env_steps": 10, "actor": "actor0"}]}
    weights = weights_to_bytes(agent)
    cap = frame_cap(transition_layout(agent.obs_shapes), 50, len(weights))
    assert len(encode(msg, key)) <= cap // 2 + (64 << 10)
    assert len(encode({"type": "weights", "version": 1, "data": weights, "session": "0" * 16, "epoch": 1,
                       "sent": 1}, key)) <= cap
    assert cap < 4 * max(len(encode(msg, key)), len(weights)) + (64 << 10)  # tight: not a blanket cap


def test_the_app_sizes_the_frame_cap_from_its_agent():
    from omegaconf import OmegaConf

    from flywheel.rl.app import RLAppConfig
    from flywheel.rl.buffers import transition_layout
    from flywheel.rl.build import transport_config
    from flywheel.rl.transport import frame_cap

    cfg = OmegaConf.structured(RLAppConfig)
    cfg.transport.send_every = 20
    agent = SACAgent(SACConfig(hidden_dims=[8], arm_dims=[0]), obs_shapes_of(LineEnv().observation_space))
    want = frame_cap(transition_layout(agent.obs_shapes), 20, len(weights_to_bytes(agent)))
    assert transport_config(cfg, agent).max_frame_bytes == want
    cfg.transport.max_frame_bytes = 12345  # an explicit cap wins
    assert transport_config(cfg, agent).max_frame_bytes == 12345
