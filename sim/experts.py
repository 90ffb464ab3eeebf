"""Scripted operators for the sim tasks: near perfect at noise 0, human-like at noise ~1.

The experts are *reactive*: each tick they re-derive what to do from the
current (privileged) scene state -- go above the object, align, descend,
close, lift, carry, release -- so they recover from their own mistakes and can
take over from a policy mid-episode (:class:`sim.intervener.SimulatedIntervener`).
They speak the rig's action language: a goal TCP pose turned into the 7-d
normalised action with :meth:`rig.spec.ActionSpec.from_target`.

Human-likeness (``noise`` > 0) comes from: slower moves, Gaussian jitter on
every action, hesitations (a few ticks of stillness), detours (a random
waypoint before the approach), aim errors on grasps and placements (so some
grasps miss and are retried: corrections), and yaw errors. Failures then come
naturally from missed grasps and the episode's time limit.
"""

from __future__ import annotations

import numpy as np

from sim.tasks import CUBE_HALF, InsertTask, LiftTask, PlaceTask, PushTask, yaw_quat

OPEN, CLOSED = 1.0, -1.0


def _wrap(a: float, period: float) -> float:
    """Wrap an angle into [-period/2, period/2)."""
    return (a + period / 2) % period - period / 2


class ScriptedExpert:
    """``reset()`` at each episode start, then ``act(obs) -> action (7,) float32``."""

    def __init__(self, env, noise: float = 0.0, seed: int | None = None) -> None:
        if noise < 0:
            raise ValueError(f"noise={noise}: must be >= 0 (0 near perfect, ~1 human-like)")
        self.env = env.unwrapped
        self.task = self.env.task
        self.spec = self.env.rig_spec.action
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self.reset()

    # ------------------------------------------------------------ episode
    def reset(self) -> None:
        n = self.noise
        self.closing = False
        self.released = False
        self.pause = 0
        self.detour = None
        self.t = 0
        self.speed = 1.0 / (1.0 + 0.6 * n)
        self._new_aim()
        if n > 0 and self.rng.random() < min(0.6 * n, 0.9):
            self.detour = np.array([self.rng.uniform(0.35, 0.6), self.rng.uniform(-0.2, 0.2),
                                    self.rng.uniform(0.15, 0.3)])

    def _new_aim(self) -> None:
        """Per-attempt aim errors of a human operator (re-drawn after each miss)."""
        n = self.noise
        self.aim = self.rng.normal(0.0, 0.011 * n, 2) if n > 0 else np.zeros(2)
        self.yaw_err = float(self.rng.normal(0.0, 0.12 * n)) if n > 0 else 0.0

    # ------------------------------------------------------------- acting
    def act(self, obs: dict) -> np.ndarray:
        ee = np.asarray(obs["state/ee_pos"], np.float64)
        ee_quat = np.asarray(obs["state/ee_quat"], np.float64)
        width = float(np.asarray(obs["state/gripper_width"]).reshape(-1)[0])
        self.t += 1
        self.fine = False  # skills set it in precision phases, where a human is steadier
        if isinstance(self.task, InsertTask):
            goal, yaw, g = self._insert(ee)
        elif isinstance(self.task, PushTask):
            goal, yaw, g = self._push(ee)
        elif isinstance(self.task, PlaceTask):
            goal, yaw, g = self._place(ee, width)
        elif isinstance(self.task, LiftTask):
            goal, yaw, g = self._lift(ee, width)
        else:  # pragma: no cover - every registered kind is handled above
            raise TypeError(f"no scripted expert for task kind {type(self.task).__name__}")
        if self.detour is not None:
            if np.linalg.norm(self.detour - ee) < 0.03 or self.t > 25:
                self.detour = None
            else:
                goal = self.detour
        width_cmd = self.spec.gripper_max_width if g > 0 else 0.0 if g < 0 else g
        a = self.spec.from_target(goal, yaw_quat(yaw), width_cmd, ee, ee_quat)
        if isinstance(self.task, PushTask):
            a[6] = self.spec.width_to_gripper(0.03)
        return self._humanize(a)

    def _humanize(self, a: np.ndarray) -> np.ndarray:
        n = self.noise
        if n <= 0:
            return a.astype(np.float32)
        a = a.copy()
        a[:6] *= self.speed
        if self.pause > 0:
            self.pause -= 1
            a[:6] = 0.0
        elif self.rng.random() < 0.055 * n:
            self.pause = int(self.rng.integers(2, 8))
        a[:6] += self.rng.normal(0.0, (0.02 if self.fine else 0.12) * n, 6)
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------ skills
    def _grasp(self, ee: np.ndarray, width: float, name: str) -> tuple[np.ndarray, float, float]:
        """Approach, align, descend and close on object ``name``; go up and retry on a miss."""
        t = self.task
        p = t.body_pos(name)
        yaw = _wrap(t.body_yaw(name), np.pi / 2) + self.yaw_err
        target = np.array([p[0] + self.aim[0], p[1] + self.aim[1], p[2]])
        xy_err = np.linalg.norm(target[:2] - ee[:2])
        cur_yaw = _wrap(np.arctan2(*self._ee_x(ee)[::-1]), np.pi / 2)
        yaw_ok = abs(_wrap(cur_yaw - yaw, np.pi / 2)) < 0.12
        if self.closing:
            if width < 2 * CUBE_HALF - 0.01:  # closed on nothing: a miss -> open, go up, re-aim
                self.closing = False
                self._new_aim()
                return np.array([ee[0], ee[1], p[2] + 0.08]), yaw, OPEN
            return np.array([ee[0], ee[1], target[2]]), yaw, CLOSED
        if xy_err < 0.006 and abs(ee[2] - target[2]) < 0.008 and width > 0.06:
            self.closing = True
            return np.array([ee[0], ee[1], target[2]]), yaw, CLOSED
        if xy_err < 0.012 and yaw_ok and width > 0.06:
            return target, yaw, OPEN
        hover = p[2] + 0.08
        if ee[2] < hover - 0.03 and xy_err > 0.02:
            return np.array([ee[0], ee[1], hover]), yaw, OPEN  # up first, clear of the objects
        return np.array([target[0], target[1], hover]), yaw, OPEN

    def _ee_x(self, ee: np.ndarray) -> np.ndarray:
        """The TCP x axis (xy) in the base frame, from the rig."""
        return self.env.rig.ee_rot[:2, 0]

    def _lift(self, ee, width):
        t = self.task
        if t.grasped("target_cube") and not self.closing_pending(width):
            p = t.body_pos("target_cube")
            return np.array([p[0], p[1], 0.2]), _wrap(t.body_yaw("target_cube"), np.pi / 2), CLOSED
        return self._grasp(ee, width, "target_cube")

    def closing_pending(self, width: float) -> bool:
        """Still squeezing: keep the arm still until the fingers stop."""
        if self.closing and t_stable(self, width):
            self.closing = False
        return self.closing

    def _place(self, ee, width):
        t = self.task
        p = t.body_pos("target_cube")
        g = t.goal_pos()
        if self.released or (t.in_goal() and not t.grasped("target_cube")):
            self.released = True
            return np.array([ee[0], ee[1], 0.2]), 0.0, OPEN
        if t.grasped("target_cube") and not self.closing_pending(width):
            carry = 0.15
            goal_xy = g[:2] + self.aim * 0.5
            err = np.linalg.norm(goal_xy - p[:2])
            yaw = _wrap(t.body_yaw("target_cube"), np.pi / 2)
            if err > 0.012:
                if ee[2] < carry - 0.04:
                    return np.array([ee[0], ee[1], carry]), yaw, CLOSED
                return np.array([ee[0] + goal_xy[0] - p[0], ee[1] + goal_xy[1] - p[1], carry]), yaw, CLOSED
            release_z = 0.07 if t.goal == "bin" else CUBE_HALF + 0.006
            if ee[2] - release_z > 0.01:
                return np.array([ee[0] + goal_xy[0] - p[0], ee[1] + goal_xy[1] - p[1], release_z]), yaw, CLOSED
            self.released = True
            return np.array([ee[0], ee[1], ee[2]]), yaw, OPEN
        return self._grasp(ee, width, "target_cube")

    def _push(self, ee):
        t = self.task
        p, g = t.body_pos("target_cube"), t.goal_pos()
        d = g[:2] - p[:2]
        dist = np.linalg.norm(d)
        u = d / max(dist, 1e-6)
        yaw = _wrap(np.arctan2(u[1], u[0]), np.pi) + self.yaw_err
        rel = ee[:2] - p[:2]
        along = float(rel @ u)
        lateral = float(rel[0] * u[1] - rel[1] * u[0])
        z_push = CUBE_HALF
        contact = 0.0285
        pre = p[:2] - u * (contact + 0.03) + self.aim * 0.5
        if dist < t.radius * 0.4:  # done: back off
            return np.array([ee[0] - u[0] * 0.02, ee[1] - u[1] * 0.02, 0.08]), yaw, 0.0
        if along < -0.02 and abs(lateral) < 0.012 and ee[2] < z_push + 0.015:
            # pushing: aim a little beyond the contact point, correcting the lateral offset
            goal_xy = p[:2] - u * contact + u * min(0.015, dist) - 0.5 * lateral * np.array([u[1], -u[0]])
            return np.array([goal_xy[0], goal_xy[1], z_push]), yaw, 0.0
        if np.linalg.norm(ee[:2] - pre) < 0.01:
            return np.array([pre[0], pre[1], z_push]), yaw, 0.0
        if ee[2] < 0.07 and np.linalg.norm(ee[:2] - pre) > 0.015:
            return np.array([ee[0], ee[1], 0.09]), yaw, 0.0
        return np.array([pre[0], pre[1], 0.09]), yaw, 0.0

    def _insert(self, ee):
        t = self.task
        b = t.peg_bottom()
        h = t.hole_pos()
        xy_err = h[:2] + self.aim * 0.05 - b[:2]
        err = float(np.linalg.norm(xy_err))
        top = 2 * t.block_hz
        self.fine = b[2] < top + 0.02
        corr = np.array([ee[0] + xy_err[0], ee[1] + xy_err[1]])
        if b[2] < top - 0.003 and err < 0.0015:  # in the hole: push down
            return np.array([*corr, ee[2] - 0.008]), 0.0, CLOSED
        if b[2] < top + 0.003 and err >= 0.0008:  # on the block (or on the hole's edge): up, re-aim
            self._new_aim()
            return np.array([*corr, ee[2] + 0.01]), 0.0, CLOSED
        if err >= 0.0008:  # align above the hole, closer as the error shrinks
            above = top + (0.006 if err < 0.004 else 0.012)
            return np.array([*corr, ee[2] + above - b[2]]), 0.0, CLOSED
        return np.array([*corr, ee[2] - 0.008]), 0.0, CLOSED  # aligned: go in


def t_stable(expert: ScriptedExpert, width: float) -> bool:
    """True once the gripper opening stopped changing (fingers are on the object)."""
    prev = getattr(expert, "_prev_width", None)
    expert._prev_width = width
    return prev is not None and abs(prev - width) < 5e-4
