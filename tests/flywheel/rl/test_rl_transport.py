"""Actor/learner transport on loopback: auth, bounded queues, reconnects, and a two-actor run."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import torch
from rl_toy_envs import LineEnv

from flywheel.rl.actor import Actor
from flywheel.rl.learner import Learner, LearnerConfig, run_actor, serve, weights_from_bytes, weights_to_bytes
from flywheel.rl.sac import SACAgent, SACConfig, obs_shapes_of
from flywheel.rl.transport import (
    ActorEndpoint,
    AuthError,
    LearnerEndpoint,
    TransportConfig,
    decode,
    encode,
    resolve_token,
)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def tcfg() -> TransportConfig:
    p1, p2 = _free_ports(2)
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
        evil.send({"type": "transitions", "x": np.ones(3)})
        good.send({"type": "transitions", "x": np.arange(3)})
        got = _recv_until(learner, 1)
        time.sleep(0.2)
        got += learner.recv(timeout_ms=100)
        assert len(got) == 1 and got[0]["actor"] == "good"
        np.testing.assert_array_equal(got[0]["x"], np.arange(3))
        assert learner.rejected == 1
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
            actor.send({"type": "transitions", "i": i})
        assert len(actor.outbox) == tcfg.queue_size
        assert actor.dropped == 20 - tcfg.queue_size
        with LearnerEndpoint(tcfg) as learner:  # the learner comes up: the newest messages arrive
            end = time.monotonic() + 5
            while actor.outbox and time.monotonic() < end:
                actor.flush()
                time.sleep(0.05)
            got = _recv_until(learner, tcfg.queue_size)
            assert [m["i"] for m in got] == list(range(20 - tcfg.queue_size, 20))


def test_actor_reconnects_after_learner_restart(tcfg):
    with ActorEndpoint(tcfg, "a") as actor:
        with LearnerEndpoint(tcfg) as first:
            time.sleep(0.2)
            actor.send({"type": "transitions", "n": 1})
            assert [m["n"] for m in _recv_until(first, 1)] == [1]
        time.sleep(0.5)  # the learner is down (a restart takes a while): messages wait in the outbox
        actor.send({"type": "transitions", "n": 2})
        assert len(actor.outbox) == 1
        with LearnerEndpoint(tcfg) as second:
            end = time.monotonic() + 10
            got: list[dict] = []
            while not got and time.monotonic() < end:
                actor.flush()
                got = second.recv(timeout_ms=100)
            assert [m["n"] for m in got] == [2]
            actor.send({"type": "transitions", "n": 3})
            assert [m["n"] for m in _recv_until(second, 1)] == [3]
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


def test_replayed_and_unnumbered_messages_are_refused(tcfg):
    """An authentic frame sent twice is dropped; so is a superseded session's; a new session is accepted."""
    import zmq

    key = resolve_token(tcfg.token)
    with LearnerEndpoint(tcfg) as learner:
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(f"tcp://{tcfg.host}:{tcfg.transitions_port}")
        try:
            def frame(session, seq, x):
                msg = {"type": "transitions", "actor": "a0", "x": np.array([x])}
                if session is not None:
                    msg.update(session=session, seq=seq)
                return encode(msg, key)

            first = frame("s1", 1, 1.0)
            for f in (first, first, frame("s1", 2, 2.0), frame("s1", 1, 3.0), frame(None, None, 4.0),
                      frame("s2", 1, 5.0), frame("s1", 3, 6.0), frame("s2", 2, 7.0)):
                push.send(f)
            got = _recv_until(learner, 4)
            time.sleep(0.2)
            got += learner.recv(timeout_ms=100)
        finally:
            push.close(0)
            ctx.term()
    # accepted: s1#1, s1#2, then the restarted sender's s2#1 and s2#2; refused: the copy of s1#1,
    # s1#1 again after #2, the unnumbered one, and s1#3 after s2 superseded s1
    assert [float(m["x"][0]) for m in got] == [1.0, 2.0, 5.0, 7.0]
    assert learner.replayed == 3 and learner.rejected == 4 and learner.received == 4


def test_actor_accepts_republished_weights_but_not_older_ones(tcfg):
    from flywheel.rl.transport import ReplayError, _ReplayGuard

    g = _ReplayGuard()
    g.check("learner", "L1", 5, strict=False)
    g.check("learner", "L1", 5, strict=False)  # the periodic republish of the same version
    g.check("learner", "L1", 9, strict=False)
    with pytest.raises(ReplayError, match="counter 6 after 9"):
        g.check("learner", "L1", 6, strict=False)
    g.check("learner", "L2", 0, strict=False)  # a restarted learner
    with pytest.raises(ReplayError, match="superseded"):
        g.check("learner", "L1", 10, strict=False)
    # end to end: the learner's weights carry its session and the actor takes them
    with LearnerEndpoint(tcfg) as learner, ActorEndpoint(tcfg, "a0") as actor:
        end = time.monotonic() + 5
        msg = None
        while msg is None and time.monotonic() < end:
            learner.publish_weights(3, b"w")
            msg = actor.poll_weights(timeout_ms=100)
        assert msg is not None and msg["session"] == learner.session and msg["version"] == 3
        assert actor.replayed == 0
