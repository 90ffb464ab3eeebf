"""Fault suite: the RL transport under attack and the episode store under damage; prints what held.

Transport (real ZeroMQ on loopback): the learner's endpoint runs in a child process (so its
memory is its own) and gets, from a raw socket, forged, unauthenticated, replayed (same
session, older sessions, superseded sessions, stale and future stamps), malformed-but-signed
and oversized frames, each followed by a good frame. A row holds when every bad frame was
refused and counted under the right counter, every good frame after it got through, and the
learner lived. The actor's side gets forged weights and weights of an older learner session.

Store: a store of 6 episodes (8-step low-dimensional chunks, one camera with depth) is damaged
one way at a time. A row holds when the first read error (or ``check``) names the array or
metadata file, ``check`` exits 1 naming the damaged episodes, ``repair`` rebuilds metadata
or quarantines exactly the episodes that overlap the damage, and every other episode then
reads back bit-identical.

    .venv/bin/python benchmarks/fault_suite.py [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.data import EpisodeStore, StoreError
from flywheel.data.damage import repair
from flywheel.data.integrity import check_store
from flywheel.rl.transport import ActorEndpoint, LearnerEndpoint, TransportConfig, encode, free_ports
from rig.spec import CameraSpec, RigSpec

CAP = 16 << 20  # the learner's frame cap in this suite (bytes)


# ------------------------------------------------------------------ transport
def _learner_proc(cfg: TransportConfig, q_out: Any, stop: Any) -> None:
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got: list[float] = []
    snaps: list[dict[str, int]] = []  # the counters when each good frame arrived
    with LearnerEndpoint(cfg) as ep:
        q_out.put("ready")
        while not stop.is_set():
            for m in ep.recv(timeout_ms=50):
                got.append(float(m["batch"]["x"][0]))
                snaps.append(ep.counters)
        q_out.put({"got": got, "snaps": snaps, **ep.counters, "received": ep.received,
                   "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024})


def transport_rows() -> list[dict[str, Any]]:
    import zmq

    p1, p2 = free_ports(2)
    cfg = TransportConfig(transitions_port=p1, weights_port=p2, token="fault-suite", max_frame_bytes=CAP)
    key = cfg.token.encode()
    now = time.time_ns
    drop = object()

    def frame(x: float, *, seq: int, session: str = "live", epoch: int = 2_000, sent: int | None = None,
              k: bytes = key, **over: Any) -> bytes:
        msg = {"type": "transitions", "actor": "a0", "session": session, "epoch": epoch, "seq": seq,
               "sent": now() if sent is None else sent, "batch": {"x": np.array([x])}, **over}
        return encode({a: b for a, b in msg.items() if b is not drop}, k)

    seq = iter(range(1, 10**6))
    cases: list[tuple[str, str, Callable[[], list[bytes]]]] = [
        ("forged: wrong token", "forged", lambda: [frame(0, seq=next(seq), k=b"guess") for _ in range(20)]),
        ("unauthenticated: short, zeros, random", "forged",
         lambda: [b"", b"x", b"\0" * 32, os.urandom(64), os.urandom(4096)]),
        ("replayed: the same frame again", "replayed", lambda: [_last[0]] * 5),
        ("replayed: an older counter, same session", "replayed", lambda: [frame(0, seq=1)]),
        ("replayed: an older session never seen here", "replayed",
         lambda: [frame(0, seq=10**5 + i, session="yesterday", epoch=1_000) for i in range(5)]),
        ("replayed: stale stamp (1000 s old)", "replayed",
         lambda: [frame(0, seq=next(seq), session="s9", epoch=9_000, sent=now() - 10**12)]),
        ("replayed: future stamp (+1000 s)", "replayed",
         lambda: [frame(0, seq=next(seq), session="s9", epoch=9_000, sent=now() + 10**12)]),
        ("malformed, signed: no batch / wrong types / NaN / ragged / bad stats / bad header", "malformed", lambda: [
            frame(0, seq=next(seq), batch=drop), frame(0, seq=next(seq), batch=[1, 2]),
            frame(0, seq=next(seq), batch={"x": np.array(["a"])}),
            frame(0, seq=next(seq), batch={"x": np.array([np.inf])}),
            frame(0, seq=next(seq), batch={"x": np.zeros(2), "y": np.zeros(3)}),
            frame(0, seq=next(seq), episodes=[{"episode": "one"}]), frame(0, seq=next(seq), episodes="x"),
            frame(0, seq=next(seq), type="weights"), frame(0, seq="7"), frame(0, seq=next(seq), session=5),
            encode([1, 2, 3], key), encode({"actor": 5}, key), _signed(b"\xc1\xc1", key),
            _signed(b"\x81\xa1x\xc7\x05\x01\x92\xa3<f8\x91\x64", key),  # an ndarray ext whose bytes are short
        ]),
        (f"oversized: 4 x {CAP >> 20} MiB cap, unauthenticated", "disconnects",
         lambda: [b"\0" * (4 * CAP)]),
        (f"oversized: 16 x {CAP >> 20} MiB cap, signed", "disconnects",
         lambda: [frame(0, seq=next(seq), pad=b"\0" * (16 * CAP))]),
    ]
    _last: list[bytes] = []
    q: Any = mp.Queue()
    stop = mp.Event()
    proc = mp.get_context("fork").Process(target=_learner_proc, args=(cfg, q, stop), daemon=True)
    proc.start()
    assert q.get(timeout=30) == "ready"
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(f"tcp://127.0.0.1:{p1}")
    time.sleep(0.3)
    rows, good = [], []
    for i, (name, counter, make) in enumerate(cases):
        if not _last:  # one good frame first: the live session the replays aim at
            _last.append(frame(-1.0, seq=next(seq)))
            push.send(_last[0])
            good.append(-1.0)
        bad = make()
        for f in bad:
            push.send(f)
        ok = frame(float(i), seq=next(seq))  # a good frame after each attack
        deadline = time.monotonic() + 10
        while True:  # ZeroMQ reconnects a dropped sender; send until the learner could have it
            try:
                push.send(ok, zmq.NOBLOCK)
                break
            except zmq.Again:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        good.append(float(i))
        rows.append({"target": "transport (learner)", "fault": name, "tried": len(bad), "counter": counter})
        time.sleep(0.4 if counter == "disconnects" else 0.1)
    time.sleep(1.0)
    stop.set()
    res = q.get(timeout=30)
    proc.join(10)
    push.close(0)
    ctx.term()
    alive = proc.exitcode == 0
    all_good = res["got"] == good
    kinds = ("forged", "replayed", "malformed", "disconnects")
    for i, r in enumerate(rows):  # what the counters did between the good frames before and after the attack
        before, after = (res["snaps"][i], res["snaps"][i + 1]) if all_good else ({}, {})
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in kinds}
        want = {k: (1 if k == "disconnects" else r["tried"]) if k == r["counter"] else 0 for k in kinds}
        r["held"] = bool(alive and all_good and delta == want)
        c = r["counter"]
        n = f"{delta[c]} connection dropped" if c == "disconnects" else f"{delta[c]}/{r['tried']}"
        r["detail"] = f"refused and counted as {c}: {n}; good frame after it taken: {all_good}; learner alive: {alive}"
    rows[-1]["detail"] += f"; learner peak RSS grew {res['rss_growth_mib']:.1f} MiB"
    rows += _actor_rows()
    return rows


def _signed(payload: bytes, key: bytes) -> bytes:
    import hashlib
    import hmac

    return hmac.new(key, payload, hashlib.sha256).digest() + payload


def _actor_rows() -> list[dict[str, Any]]:
    p1, p2 = free_ports(2)
    cfg = TransportConfig(transitions_port=p1, weights_port=p2, token="fault-suite", max_frame_bytes=CAP)
    with LearnerEndpoint(cfg) as old:
        stale = encode(old._stamp({"type": "weights", "version": 10**6, "data": b"old"}), old._key)
    time.sleep(0.01)
    rows = []
    with LearnerEndpoint(cfg) as learner, ActorEndpoint(cfg, "a0") as actor:
        msg, end = None, time.monotonic() + 10
        while msg is None and time.monotonic() < end:
            learner.publish_weights(7, b"live")
            msg = actor.poll_weights(100)
        for name, frame, counter in (("weights of an older learner session (higher version)", stale, "replayed"),
                                     ("forged weights", os.urandom(200), "forged"),
                                     ("signed weights without data", encode(learner._stamp({"type": "weights",
                                                                                          "version": 8}),
                                                                           learner._key), "malformed")):
            before, taken = getattr(actor, counter), []
            for _ in range(20):
                learner._pub.send(frame)
                w = actor.poll_weights(100)
                if w is not None:
                    taken.append(w)
                if getattr(actor, counter) > before:
                    break
            rows.append({"target": "transport (actor)", "fault": name, "tried": 1, "counter": counter,
                         "held": bool(msg is not None and not taken and getattr(actor, counter) > before),
                         "detail": f"refused as {counter}; weights in use stay version {msg and msg['version']}"})
    return rows


# ---------------------------------------------------------------------- store
LENGTHS = [6, 11, 4, 9, 5, 7]  # steps 0 6 17 21 30 35 42


def _make_store(path: Path) -> list[dict[str, np.ndarray]]:
    spec = RigSpec(cameras=(CameraSpec("front", 24, 32, depth=True),))
    rng = np.random.default_rng(0)
    eps = []
    with EpisodeStore(path, "w", spec, lowdim_chunk=8) as s:
        for i, n in enumerate(LENGTHS):
            ep = {k: rng.standard_normal((n, *v.shape)).astype(v.dtype) for k, v in spec.observation_specs().items()
                  if k.startswith("state/")}
            ep["images/front"] = np.full((n, 24, 32, 3), 40 * i, np.uint8)
            ep["depth/front"] = rng.integers(0, 4000, (n, 24, 32)).astype(np.uint16)
            ep["action"] = rng.uniform(-1, 1, (n, 7)).astype(np.float32)
            ep["reward"] = rng.standard_normal(n).astype(np.float32)
            s.add_episode(ep, task=f"t{i}")
            eps.append(ep)
    return eps


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 2)])


def _garble(f: Path) -> None:
    f.write_bytes(bytes(b ^ 0x5A for b in f.read_bytes()))


def _delete(f: Path) -> None:
    f.unlink()


# (damage, file, what to do, names in the error, episodes it must cost (None: metadata, all recovered))
STORE_CASES: list[tuple[str, str, Callable[[Path], None], str, list[int] | None]] = [
    ("low-dim chunk garbled", "data/action/c/1/0", _garble, "data/action/c/1/0", [1]),
    ("low-dim chunk truncated", "data/state/ee_pos/c/2/0", _truncate, "data/state/ee_pos/c/2/0", [1, 2, 3]),
    ("low-dim chunk deleted", "data/reward/c/4", _delete, "data/reward/c/4", [4, 5]),
    ("image chunk garbled", "data/images/front/c/19/0/0/0", _garble, "data/images/front/c/19/0/0/0", [2]),
    ("image chunk truncated", "data/images/front/c/40/0/0/0", _truncate, "data/images/front/c/40/0/0/0", [5]),
    ("image chunk deleted", "data/images/front/c/3/0/0/0", _delete, "data/images/front/c/3/0/0/0", [0]),
    ("depth chunk truncated", "data/depth/front/c/31/0/0", _truncate, "data/depth/front/c/31/0/0", [4]),
    ("root zarr.json truncated", "zarr.json", _truncate, "zarr.json", None),
    ("root zarr.json garbled", "zarr.json", _garble, "zarr.json", None),
    ("root zarr.json deleted", "zarr.json", _delete, "zarr.json", None),
    ("array zarr.json truncated", "data/action/zarr.json", _truncate, "data/action", None),
    ("array zarr.json deleted", "data/images/front/zarr.json", _delete, "data/images/front", None),
    ("meta/episodes chunk garbled", "meta/episodes/c/0", _garble, "meta/episodes", None),
    ("meta/episode_ends chunk truncated", "meta/episode_ends/c/0", _truncate, "meta/episode_ends", None),
    ("meta/episodes zarr.json truncated", "meta/episodes/zarr.json", _truncate, "meta/episodes", None),
    ("journal: torn last line", "journal.jsonl", lambda f: f.write_bytes(f.read_bytes()[:-40]), "", None),
]


def _first_error(path: Path, spec_keys: list[str]) -> str:
    try:
        s = EpisodeStore(path)
        for i in range(s.num_episodes):
            for k in spec_keys:
                s.episode(i)[k]
    except StoreError as e:
        return str(e)
    return ""


def _store_row(root: Path, damage: str, rel: str, do: Callable[[Path], None], named: str,
               lost: list[int] | None) -> dict[str, Any]:
    path = root / "s.zarr"
    shutil.rmtree(path, ignore_errors=True)
    eps = _make_store(path)
    do(path / rel)
    keys = list(eps[0])
    err = _first_error(path, keys)
    probs = check_store(str(path))
    errors = [p for p in probs if p.severity == "error"]
    flagged = sorted({i for p in errors for i in p.episodes})
    try:
        done = repair(str(path))
        s = EpisodeStore(path)
        readable = s.select()
        intact = all(np.array_equal(s.episode(i)[k], eps[i][k]) for i in readable for k in keys
                     if not k.startswith("images/"))
        clean = not [p for p in check_store(str(path)) if p.severity == "error"]
        want = [i for i in range(len(LENGTHS)) if i not in (lost or [])]
    except StoreError as e:
        return {"target": "store", "fault": damage, "tried": 1, "held": False, "detail": f"repair failed: {e}"}
    named_ok = (named in err and "episode" in err or named in err and lost is None) if named else not err
    check_ok = (flagged == lost) if lost is not None else (bool(errors) or not named)
    held = named_ok and check_ok and readable == want and intact and clean
    return {"target": "store", "fault": damage, "tried": 1, "held": bool(held),
            "detail": f"error names it: {named_ok}; check flags episodes {flagged or '-'}; repair: {len(done)} "
                      f"actions; readable after: {readable} (intact: {intact})"}


def store_rows() -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="fault_suite_"))
    try:
        rows = [_store_row(root, *c) for c in STORE_CASES]
        path = root / "s.zarr"  # no journal and damaged root metadata: a clear error, not a guess
        shutil.rmtree(path, ignore_errors=True)
        _make_store(path)
        (path / "journal.jsonl").unlink()
        _truncate(path / "zarr.json")
        try:
            repair(str(path))
            msg = ""
        except StoreError as e:
            msg = str(e)
        rows.append({"target": "store", "fault": "root zarr.json truncated, journal deleted", "tried": 1,
                     "held": "no usable journal" in msg, "detail": f"repair refuses: {msg[:90]}..."})
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    t0 = time.time()
    rows = transport_rows() + store_rows()
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print("| target | fault | tried | held | what happened |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['target']} | {r['fault']} | {r['tried']} | {'yes' if r['held'] else '**NO**'} | {r['detail']} |")
    held = sum(r["held"] for r in rows)
    print(f"\n{held}/{len(rows)} held ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
