"""Asynchronous vs synchronous action-chunk execution in sim, with an injected inference delay.

A scripted chunk policy drives ``sim.make(task)``: at each request it plans a
chunk of H actions by rolling the scripted expert forward on predicted states
(open loop, as a VLA would), and the "inference" then takes an injected
``delay`` control periods (a real sleep in a worker thread). The control loop
runs in real time at ``control_hz``:

* ``async``: :class:`policy.chunking.ChunkScheduler` executes the current chunk
  while the next is computed, aligns the new chunk to the elapsed ticks and
  blends over the overlap;
* ``sync``: the robot holds while the policy infers, then executes ``n_exec``
  actions of the chunk open loop (``H``: the whole chunk; ``H/2``: half, the
  more reactive usual setting).

Reported per (mode, delay): success rate, task completion time (s, successful
episodes), missed control ticks per episode (ticks with no action to send),
and the largest jump of the arm action (dims 0..5, inf-norm) at a chunk
boundary.

    .venv/bin/python benchmarks/policy_async.py            # 5 episodes per setting
    .venv/bin/python benchmarks/policy_async.py --quick    # 1 episode, delay 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import threading
import time
from pathlib import Path

import mujoco
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sim  # noqa: E402
from benchmarks.tables import markdown_table, publish  # noqa: E402
from policy.chunking import ChunkScheduler  # noqa: E402


class ScriptedChunkPolicy:
    """Plans H actions from one state: the scripted expert rolled out in a cloned simulator (an oracle
    open-loop chunk, what a perfect VLA would predict from that observation)."""

    def __init__(self, task: str, env, horizon: int) -> None:
        self.env = env
        self.expert = sim.expert(env)
        self.clone = sim.make(task, cameras=(), max_episode_steps=10_000)
        self.horizon = horizon

    def reset(self, seed: int) -> None:
        self.expert.reset()
        self.clone.reset(seed=seed)  # the same scene (goals, object sizes) as the real env

    def observe(self, obs) -> None:
        """Keep the expert's phase (approach, grasp, lift) current with the real observation."""
        self.expert.act(obs)

    def snapshot(self, obs, prefix: np.ndarray | None = None):
        """What inference needs, copied in the control thread: physics + controller state, expert, obs,
        and the committed prefix (the actions the robot executes while the chunk is computed)."""
        r = self.env.unwrapped.rig
        rig = {k: copy.deepcopy(getattr(r, k)) for k in _RIG_STATE}
        d = r.data
        phys = (d.qpos.copy(), d.qvel.copy(), d.act.copy(), d.ctrl.copy(), d.time, d.qacc_warmstart.copy())
        expert = copy.deepcopy(self.expert.__dict__ | {"env": None, "task": None, "rng": None})
        return phys, rig, expert, dict(obs), (np.zeros((0, 7), np.float32) if prefix is None else prefix.copy())

    def plan(self, snap) -> np.ndarray:
        phys, rig, expert_state, obs, prefix = snap
        cu = self.clone.unwrapped
        d = cu.rig.data
        d.qpos[:], d.qvel[:], d.act[:], d.ctrl[:], d.time, d.qacc_warmstart[:] = phys
        for k, v in rig.items():
            setattr(cu.rig, k, v)
        mujoco.mj_forward(cu.rig.model, d)
        e = copy.copy(self.expert)
        e.__dict__.update({k: v for k, v in expert_state.items() if v is not None})
        e.env, e.task = cu, cu.task
        out = []
        o = obs
        for k in range(self.horizon):
            a = e.act(o)
            if k < len(prefix):  # committed: the robot executes these meanwhile (real-time chunking)
                a = prefix[k]
            out.append(a)
            o = self.clone.step(a)[0]
        return np.asarray(out, np.float32)


_RIG_STATE = ("target_pos", "target_rot", "gripper_target", "gripper_speed", "_tau_prev")


class DelayedInference:
    """Inference that takes ``delay`` control periods.

    ``real``: a worker thread plans the chunk, then sleeps so that inference takes ``delay_s`` of wall
    time in all (the injected sleep), while the control loop keeps running in real time.
    ``virtual``: the chunk is planned at once and handed over exactly ``delay`` ticks later
    (deterministic; what the real mode approaches on an idle machine)."""

    def __init__(self, policy: ScriptedChunkPolicy, delay: int, delay_s: float, clock: str) -> None:
        self.policy = policy
        self.delay, self.delay_s, self.clock = delay, delay_s, clock
        self.result = None
        self.busy = False
        self._due = 0
        self._pending = None
        self._lock = threading.Lock()

    def request(self, snap, obs_tick: int) -> None:
        self.busy = True
        if self.clock == "virtual":
            self._pending, self._due = (self.policy.plan(snap), obs_tick), obs_tick + self.delay
            return

        def run():
            t0 = time.monotonic()
            chunk = self.policy.plan(snap)
            time.sleep(max(0.0, self.delay_s - (time.monotonic() - t0)))
            with self._lock:
                self.result = (chunk, obs_tick)
                self.busy = False

        threading.Thread(target=run, daemon=True).start()

    def take(self, tick: int):
        if self.clock == "virtual" and self._pending is not None and tick >= self._due:
            self.result, self._pending, self.busy = self._pending, None, False
        with self._lock:
            r, self.result = self.result, None
        return r


def episode(env, policy: ScriptedChunkPolicy, mode: str, delay: int, n_exec: int, seed: int, hz: float,
            blend: int, max_ticks: int, time_scale: float, clock: str) -> dict:
    period = time_scale / hz  # wall seconds per control tick
    obs, info = env.reset(seed=seed)
    policy.reset(seed)
    # real clock: a little under the delay, so a result is due at its tick
    inf = DelayedInference(policy, delay, delay * period * 0.9, clock)
    delays: list[int] = []
    started = False
    sched = ChunkScheduler(7, blend_steps=blend)
    hold = np.zeros(7, np.float32)
    hold[6] = 1.0
    last: np.ndarray | None = None
    boundary_jumps: list[float] = []
    inner_jumps: list[float] = []
    missed = 0
    queue: list[np.ndarray] = []  # sync mode: actions left of the current chunk
    boundary = False
    t0 = time.monotonic()
    tick = 0
    success = False
    for tick in range(max_ticks):
        # real-time pacing
        wait = t0 + tick * period - time.monotonic()
        if wait > 0 and clock == "real":
            time.sleep(wait)
        policy.observe(obs)
        if mode.startswith("async"):
            r = inf.take(tick)
            if r is not None:
                delays.append(tick - r[1])
                boundary = sched.add(r[0], r[1], tick) or boundary
            expect = max(delay, int(np.ceil(np.percentile(delays[-10:], 90)))) if delays else delay
            if not inf.busy and inf.result is None and sched.should_request(tick, expect):
                prefix = sched.committed(tick, tick, expect) if mode == "async+prefix" else None
                inf.request(policy.snapshot(obs, prefix), tick)
            action = sched.next_action(tick)
        else:
            r = inf.take(tick)
            if r is not None:
                delays.append(tick - r[1])
                queue = list(r[0][:n_exec])
                boundary = True
            if not queue and not inf.busy and r is None:
                inf.request(policy.snapshot(obs), tick)
            action = queue.pop(0) if queue else None
        if action is None:
            missed += started  # ticks before the very first chunk are the same start-up for every mode
            action = hold.copy() if last is None else np.concatenate([np.zeros(6, np.float32), last[6:]])
        else:
            if last is not None:
                jump = float(np.max(np.abs(action[:6] - last[:6])))
                (boundary_jumps if boundary else inner_jumps).append(jump)
            boundary = False
            started = True
            last = action
        obs, _, term, trunc, info = env.step(action)
        if info.get("is_success"):
            success = True
            break
        if term or trunc:
            break
    # let a pending worker finish before the next episode
    while inf.busy and clock == "real":
        time.sleep(0.01)
    return {"success": success, "ticks": tick + 1, "missed": missed, "delay_ticks": delays,
            "max_boundary_jump": max(boundary_jumps) if boundary_jumps else 0.0,
            "max_inner_jump": max(inner_jumps) if inner_jumps else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="LiftCube-Red")
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--delays", default="1,2,3", help="injected inference delays, in control periods")
    ap.add_argument("--blend", type=int, default=2)
    ap.add_argument("--max-ticks", type=int, default=150)
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="wall seconds per control period / nominal (>1 runs slower than real time, e.g. on a "
                         "loaded machine; delays scale with it)")
    ap.add_argument("--clock", choices=("real", "virtual"), default="real",
                    help="real: worker thread + injected sleep at control rate; virtual: delays counted in ticks")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.quick:
        args.episodes, args.delays = 1, "2"
    env = sim.make(args.task, cameras=(), max_episode_steps=args.max_ticks)
    spec = env.unwrapped.rig_spec.action
    h, hz = spec.chunk_horizon, spec.control_hz
    policy = ScriptedChunkPolicy(args.task, env, h)
    settings = [("async", h), ("async+prefix", h), ("sync", h), ("sync", h // 2)]
    rows = []
    for d in (int(x) for x in args.delays.split(",")):
        for mode, n_exec in settings:
            eps = [episode(env, policy, mode, d, n_exec, 1000 + i, hz, args.blend, args.max_ticks, args.time_scale,
                           args.clock)
                   for i in range(args.episodes)]
            ok = [e for e in eps if e["success"]]
            row = {"mode": mode if mode.startswith("async") else f"sync (exec {n_exec}/{h})", "delay": d,
                   "success": len(ok) / len(eps),
                   "time_s": float(np.mean([e["ticks"] for e in ok]) / hz) if ok else float("nan"),
                   "missed_per_ep": float(np.mean([e["missed"] for e in eps])),
                   "max_jump": float(max(e["max_boundary_jump"] for e in eps)),
                   "max_inner_jump": float(max(e["max_inner_jump"] for e in eps)),
                   "achieved_delay": float(np.mean([x for e in eps for x in e["delay_ticks"]]))}
            print(json.dumps(row), flush=True)
            rows.append(row)
    env.close()
    cells = []
    for r in rows:
        base = next(x for x in rows if x["delay"] == r["delay"] and x["mode"] == "async")
        best = next(x for x in rows if x["delay"] == r["delay"] and x["mode"] == "async+prefix")
        sync = "" if r["mode"].startswith("async") else (
            f"{r['time_s'] / base['time_s']:.2f}x / {r['time_s'] / best['time_s']:.2f}x")
        cells.append([r["delay"], f"{r['achieved_delay']:.1f}", r["mode"], f"{r['success']:.0%}", f"{r['time_s']:.2f}",
                      sync or "-", f"{r['missed_per_ep']:.1f}", f"{r['max_jump']:.3f}", f"{r['max_inner_jump']:.3f}"])
    publish(markdown_table(["delay (periods)", "achieved", "mode", "success", "completion time s",
                            "sync / async, / async+prefix", "missed ticks / ep", "max jump at boundary",
                            "max jump inside chunks"], cells),
            heading=f"task {args.task}, H={h}, {hz:g} Hz, {args.episodes} episodes per row, blend {args.blend} "
                    f"ticks, clock {args.clock}, time scale {args.time_scale}")
    print(f"\nload average: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
