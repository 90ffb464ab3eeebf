"""The language-conditioned task suite: reset distributions, success tests, rewards.

Each task kind is one small class over a :class:`~sim.rig.SimRig`:

* :class:`LiftTask` -- "pick up the red cube" among distractor cubes of other colours;
* :class:`PlaceTask` -- put a cube in a bin or on a marked target;
* :class:`InsertTask` -- a square peg (20 mm) into a square hole (22 mm: 2 mm
  clearance, 1 mm per side). The peg starts **already grasped**, held 3-5 cm
  above the block and up to 3 cm off the hole, so RL on it is tractable on a CPU;
* :class:`PushTask` -- push a cube into a marked target region.

Every task has a sparse success reward (1 on success; the RL default) and a
dense shaping term (in ``info["dense_reward"]``, for diagnostics), and a
privileged state vector (object and goal positions; a cube's yaw relative to
the gripper's, folded by its 90 degree symmetry) that state-only RL can opt
into. Task definitions (id, group, instruction, colours) live in
:mod:`sim.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.model import ObjectSpec

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.1),
    "green": (0.15, 0.7, 0.2),
    "blue": (0.12, 0.3, 0.9),
    "yellow": (0.92, 0.82, 0.1),
    "purple": (0.55, 0.2, 0.75),
    "orange": (0.95, 0.5, 0.08),
}
CUBE_HALF = 0.02
TABLE_Z = 0.0
NOMINAL_QUAT = np.array([1.0, 0.0, 0.0, 0.0])  # TCP pointing down, x along base x


@dataclass(frozen=True)
class TaskDef:
    """A registered task variant."""

    task_id: str
    kind: str  # lift | place | insert | push
    group: str  # expert | rl | unseen
    instruction: str
    color: str = "red"
    params: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int = 100


def yaw_quat(yaw: float) -> np.ndarray:
    """TCP pointing down, rotated by ``yaw`` about the base z axis; (x, y, z, w)."""
    # Rz(yaw) * Rx(pi): quaternion (x, y, z, w) = (cos(y/2), sin(y/2), 0, 0)
    return np.array([np.cos(yaw / 2), np.sin(yaw / 2), 0.0, 0.0])


def _rgba(name: str) -> tuple[float, float, float, float]:
    return (*COLORS[name], 1.0)


def _yaw_of(quat_wxyz: np.ndarray) -> float:
    w, x, y, z = quat_wxyz
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


class Task:
    """Base: object bookkeeping over a SimRig. Subclasses define objects, reset and success."""

    def __init__(self, tdef: TaskDef) -> None:
        self.tdef = tdef
        if tdef.color not in COLORS:
            raise ValueError(f"task {tdef.task_id}: unknown colour {tdef.color!r}; known: {sorted(COLORS)}")
        self.rig = None

    # geometry declared to the model builder
    def objects(self) -> tuple[ObjectSpec, ...]:
        raise NotImplementedError

    def bind(self, rig) -> None:
        self.rig = rig

    # ---------------------------------------------------------- rig helpers
    def body_pos(self, name: str) -> np.ndarray:
        return self.rig.data.body(name).xpos.copy()

    def body_yaw(self, name: str) -> float:
        return _yaw_of(self.rig.data.body(name).xquat)

    def yaw_in_gripper(self, name: str, symmetry: float = np.pi / 2) -> float:
        """Object ``name``'s yaw relative to the gripper's, folded by the object's symmetry into
        [-symmetry/2, symmetry/2): the turn that aligns the fingers with it, as a wrist camera shows it.

        The raw world yaw is a poor RL feature: the agent does not see its own yaw, and near
        +-45 degrees the shortest turn flips sign, where a smooth policy dithered and never closed.
        """
        x = self.rig.ee_rot[:2, 0]
        rel = self.body_yaw(name) - float(np.arctan2(x[1], x[0]))
        return float((rel + symmetry / 2) % symmetry - symmetry / 2)

    def set_free(self, name: str, pos: np.ndarray, yaw: float = 0.0) -> None:
        m, d = self.rig.model, self.rig.data
        adr = m.jnt_qposadr[m.joint(name).id]
        d.qpos[adr: adr + 3] = pos
        d.qpos[adr + 3: adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        dadr = m.jnt_dofadr[m.joint(name).id]
        d.qvel[dadr: dadr + 6] = 0.0

    def set_mocap(self, name: str, pos: np.ndarray) -> None:
        m, d = self.rig.model, self.rig.data
        d.mocap_pos[m.body_mocapid[m.body(name).id]] = pos

    def set_color(self, name: str, rgb: np.ndarray) -> None:
        m = self.rig.model
        for g in np.where(m.geom_bodyid == m.body(name).id)[0]:
            m.geom_rgba[g, :3] = rgb

    def place_cube_and_goal(self, cube_xy: np.ndarray, goal_xy: np.ndarray, rng: np.random.Generator,
                            randomize: bool) -> None:
        """Put the task's cube (random yaw when randomising) and its goal marker on the table."""
        self.set_free("target_cube", np.array([*cube_xy, CUBE_HALF]),
                      float(rng.uniform(-np.pi / 4, np.pi / 4)) if randomize else 0.0)
        self.set_mocap("goal", np.array([*goal_xy, 0.0]))
        self.set_color("target_cube", np.array(COLORS[self.tdef.color]))

    def goal_pos(self) -> np.ndarray:
        """The goal marker's position (place and push tasks)."""
        m, d = self.rig.model, self.rig.data
        return d.mocap_pos[m.body_mocapid[m.body("goal").id]].copy()

    @staticmethod
    def sample_xy(rng: np.random.Generator, lo, hi, n: int, min_dist: float, randomize: bool = True) -> np.ndarray:
        """``n`` points in the box [lo, hi] at least ``min_dist`` apart (rejection sampling)."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        if not randomize:  # the nominal layout: a row across the region's middle
            ys = np.linspace(lo[1], hi[1], n + 2)[1:-1] if n > 1 else np.array([(lo[1] + hi[1]) / 2])
            return np.stack([np.full(n, (lo[0] + hi[0]) / 2), ys], axis=1)
        for _ in range(1000):
            pts = rng.uniform(lo, hi, size=(n, 2))
            dists = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(n) * 1e9
            if dists.min() >= min_dist:
                return pts
        raise RuntimeError(f"could not place {n} objects {min_dist} m apart in {lo}..{hi}")

    def start_pose(self, rng: np.random.Generator, randomize: bool) -> tuple[np.ndarray, np.ndarray]:
        """Where the TCP starts: above the workspace centre, pointing down, with a little noise."""
        pos = np.array([0.45, 0.0, 0.25])
        if randomize:
            pos = pos + rng.uniform(-0.03, 0.03, 3)
        return pos, NOMINAL_QUAT.copy()

    def grasped(self, name: str, half: float = CUBE_HALF) -> bool:
        """The object is held between the fingers (near the TCP, the opening about its size)."""
        w = self.rig.gripper_width
        near = np.linalg.norm(self.body_pos(name) - self.rig.ee_pos) < 0.025
        return bool(near and 2 * half - 0.008 < w < 2 * half + 0.004)

    # ------------------------------------------------------------ interface
    def reset(self, rng: np.random.Generator, randomize: bool = True) -> None:
        raise NotImplementedError

    def success(self) -> bool:
        raise NotImplementedError

    def dense_reward(self) -> float:
        raise NotImplementedError

    def privileged(self) -> np.ndarray:
        """Object and goal positions, flattened (for state-only RL)."""
        raise NotImplementedError


class LiftTask(Task):
    """Pick up the cube of one colour; ``params['distractors']`` cubes of other colours around it."""

    lift_height = 0.05

    def __init__(self, tdef: TaskDef) -> None:
        super().__init__(tdef)
        self.n_distractors = int(tdef.params.get("distractors", 2))
        self.region = tdef.params.get("region", ((0.38, -0.15), (0.58, 0.15)))

    def objects(self) -> tuple[ObjectSpec, ...]:
        objs = [ObjectSpec("target_cube", "box", (CUBE_HALF,) * 3, _rgba(self.tdef.color))]
        objs += [ObjectSpec(f"distractor{i}", "box", (CUBE_HALF,) * 3, (0.5, 0.5, 0.5, 1.0))
                 for i in range(self.n_distractors)]
        return tuple(objs)

    def reset(self, rng: np.random.Generator, randomize: bool = True) -> None:
        n = 1 + self.n_distractors
        pts = self.sample_xy(rng, *self.region, n, 0.08, randomize)
        names = ["target_cube"] + [f"distractor{i}" for i in range(self.n_distractors)]
        others = [c for c in COLORS if c != self.tdef.color]
        picks = rng.choice(len(others), size=self.n_distractors, replace=False) if randomize else range(
            self.n_distractors)
        for i, name in enumerate(names):
            yaw = float(rng.uniform(-np.pi / 4, np.pi / 4)) if randomize else 0.0
            self.set_free(name, np.array([*pts[i], CUBE_HALF]), yaw)
            if i > 0:
                self.set_color(name, np.array(COLORS[others[picks[i - 1]]]))
        self.set_color("target_cube", np.array(COLORS[self.tdef.color]))

    def success(self) -> bool:
        return bool(self.body_pos("target_cube")[2] > CUBE_HALF + self.lift_height)

    def dense_reward(self) -> float:
        p = self.body_pos("target_cube")
        reach = np.linalg.norm(p - self.rig.ee_pos)
        lift = np.clip((p[2] - CUBE_HALF) / self.lift_height, 0.0, 1.0)
        return float(-reach + 0.5 * self.grasped("target_cube") + lift)

    def privileged(self) -> np.ndarray:
        return np.concatenate([self.body_pos("target_cube"), [self.yaw_in_gripper("target_cube")]])


class PlaceTask(Task):
    """Put the cube in a bin (``params['goal'] = 'bin'``) or on a marked target (``'target'``)."""

    def __init__(self, tdef: TaskDef) -> None:
        super().__init__(tdef)
        self.goal = tdef.params.get("goal", "bin")
        if self.goal not in ("bin", "target"):
            raise ValueError(f"task {tdef.task_id}: goal={self.goal!r}; use 'bin' or 'target'")
        self.bin_half = 0.06
        self.bin_height = 0.05
        self.target_radius = 0.035
        self.goal_color = tdef.params.get("goal_color", "orange")

    def objects(self) -> tuple[ObjectSpec, ...]:
        cube = ObjectSpec("target_cube", "box", (CUBE_HALF,) * 3, _rgba(self.tdef.color))
        if self.goal == "bin":
            goal = ObjectSpec("goal", "bin", (self.bin_half, self.bin_half, self.bin_height), (0.35, 0.35, 0.4, 1))
        else:
            goal = ObjectSpec("goal", "target", (self.target_radius,), _rgba(self.goal_color))
        return (cube, goal)

    def reset(self, rng: np.random.Generator, randomize: bool = True) -> None:
        if randomize:
            cube = rng.uniform((0.38, -0.15), (0.55, 0.15))
            side = rng.choice([-1.0, 1.0])
            goal = np.array([rng.uniform(0.42, 0.58), side * rng.uniform(0.12, 0.2)])
            if abs(goal[1] - cube[1]) < 0.15:  # keep the cube out of the bin's footprint
                cube[1] = goal[1] - side * 0.15
        else:
            cube, goal = np.array([0.45, -0.05]), np.array([0.5, 0.15])
        self.place_cube_and_goal(cube, goal, rng, randomize)

    def in_goal(self) -> bool:
        p, g = self.body_pos("target_cube"), self.goal_pos()
        if self.goal == "bin":
            inside = np.all(np.abs(p[:2] - g[:2]) < self.bin_half - CUBE_HALF + 0.005)
            return bool(inside and p[2] < self.bin_height)
        return bool(np.linalg.norm(p[:2] - g[:2]) < self.target_radius and p[2] < CUBE_HALF + 0.005)

    def success(self) -> bool:
        released = self.rig.gripper_width > 2 * CUBE_HALF + 0.005
        return self.in_goal() and released

    def dense_reward(self) -> float:
        p, g = self.body_pos("target_cube"), self.goal_pos()
        reach = np.linalg.norm(p - self.rig.ee_pos)
        to_goal = np.linalg.norm(p[:2] - g[:2])
        return float(-reach - to_goal + 0.5 * self.grasped("target_cube") + self.success())

    def privileged(self) -> np.ndarray:
        return np.concatenate([self.body_pos("target_cube"), [self.yaw_in_gripper("target_cube")], self.goal_pos()])


class InsertTask(Task):
    """Square peg into a square hole with 2 mm clearance; the peg starts grasped above the hole."""

    peg_half = 0.01
    peg_len_half = 0.04
    hole_half = 0.011  # 22 mm hole for a 20 mm peg
    block_half = 0.05
    block_hz = 0.02  # block height 40 mm
    grasp_offset = 0.02  # TCP this far above the peg centre
    depth = 0.025  # success: the peg bottom this deep in the hole

    def objects(self) -> tuple[ObjectSpec, ...]:
        return (
            ObjectSpec("peg", "peg", (self.peg_half, self.peg_half, self.peg_len_half), _rgba(self.tdef.color),
                       mass=0.03),
            ObjectSpec("hole", "hole", (self.block_half, self.block_hz, self.hole_half), (0.4, 0.4, 0.45, 1)),
        )

    def hole_pos(self) -> np.ndarray:
        m, d = self.rig.model, self.rig.data
        return d.mocap_pos[m.body_mocapid[m.body("hole").id]].copy()

    def reset(self, rng: np.random.Generator, randomize: bool = True) -> None:
        hole = np.array([*(rng.uniform((0.45, -0.08), (0.55, 0.08)) if randomize else (0.5, 0.0)), 0.0])
        off = rng.uniform(-0.03, 0.03, 2) if randomize else np.array([0.02, -0.02])
        lift = rng.uniform(0.03, 0.05) if randomize else 0.04
        tcp = np.array([hole[0] + off[0], hole[1] + off[1],
                        2 * self.block_hz + lift + self.peg_len_half + self.grasp_offset])
        self.rig.reset_to_pose(tcp, NOMINAL_QUAT, gripper_width=2 * self.peg_half + 0.002)
        self.set_mocap("hole", hole)  # after the rig reset (mj_resetData puts mocap bodies back)
        self.set_free("peg", tcp - np.array([0.0, 0.0, self.grasp_offset]))
        self.rig.set_gripper(0.0, speed=0.1, force=20.0)
        self.set_color("peg", np.array(COLORS[self.tdef.color]))

    def start_pose(self, rng, randomize):  # the pose is set by reset() (peg in hand)
        return None

    def peg_bottom(self) -> np.ndarray:
        """Centre of the peg's bottom face (follows the peg's tilt)."""
        body = self.rig.data.body("peg")
        return body.xpos - body.xmat.reshape(3, 3)[:, 2] * self.peg_len_half

    def success(self) -> bool:
        b, h = self.peg_bottom(), self.hole_pos()
        return bool(np.linalg.norm(b[:2] - h[:2]) < self.hole_half and b[2] < 2 * self.block_hz - self.depth)

    def dense_reward(self) -> float:
        b, h = self.peg_bottom(), self.hole_pos()
        xy = np.linalg.norm(b[:2] - h[:2])
        depth = np.clip((2 * self.block_hz - b[2]) / self.depth, -5.0, 1.0)
        return float(-10.0 * xy + 0.1 * depth + self.success())

    def privileged(self) -> np.ndarray:
        # the peg's bottom, not its centre: pressed on the block the peg tilts in the fingers by up to
        # 10 mm at the tip, and an agent that sees the centre thinks it is aligned when it is not
        return np.concatenate([self.peg_bottom(), self.hole_pos()])


class PushTask(Task):
    """Push the cube into a circular target region (radius ``params['radius']``)."""

    def __init__(self, tdef: TaskDef) -> None:
        super().__init__(tdef)
        self.radius = float(tdef.params.get("radius", 0.04))
        self.dist = tdef.params.get("distance", (0.1, 0.15))
        self.region = tdef.params.get("region", ((0.42, -0.1), (0.55, 0.1)))
        self.goal_color = tdef.params.get("goal_color", "yellow")

    def objects(self) -> tuple[ObjectSpec, ...]:
        return (
            ObjectSpec("target_cube", "box", (CUBE_HALF,) * 3, _rgba(self.tdef.color), mass=0.1),
            ObjectSpec("goal", "target", (self.radius,), (*COLORS[self.goal_color], 0.6)),
        )

    def reset(self, rng: np.random.Generator, randomize: bool = True) -> None:
        for _ in range(1000):
            cube = rng.uniform(*self.region) if randomize else np.array([0.45, 0.0])
            ang = rng.uniform(-np.pi, np.pi) if randomize else np.pi / 2
            goal = cube + rng.uniform(*self.dist) * np.array([np.cos(ang), np.sin(ang)]) if randomize else (
                cube + np.array([0.0, 0.12]))
            if 0.33 <= goal[0] <= 0.65 and abs(goal[1]) <= 0.25:
                break
        self.place_cube_and_goal(cube, goal, rng, randomize)

    def success(self) -> bool:
        p, g = self.body_pos("target_cube"), self.goal_pos()
        return bool(np.linalg.norm(p[:2] - g[:2]) < self.radius and p[2] < CUBE_HALF + 0.005)

    def dense_reward(self) -> float:
        p, g = self.body_pos("target_cube"), self.goal_pos()
        return float(-np.linalg.norm(p - self.rig.ee_pos) - 2.0 * np.linalg.norm(p[:2] - g[:2]) + self.success())

    def privileged(self) -> np.ndarray:
        return np.concatenate([self.body_pos("target_cube"), [self.yaw_in_gripper("target_cube")], self.goal_pos()])


TASK_KINDS: dict[str, type[Task]] = {"lift": LiftTask, "place": PlaceTask, "insert": InsertTask, "push": PushTask}


def make_task(tdef: TaskDef) -> Task:
    if tdef.kind not in TASK_KINDS:
        raise ValueError(f"task {tdef.task_id}: unknown kind {tdef.kind!r}; known: {sorted(TASK_KINDS)}")
    return TASK_KINDS[tdef.kind](tdef)


def settle(rig, steps: int = 20) -> None:
    """Let objects come to rest after a reset (the controller holds the arm)."""
    rig.step(steps)


__all__ = ["COLORS", "TaskDef", "Task", "LiftTask", "PlaceTask", "InsertTask", "PushTask", "make_task",
           "yaw_quat", "settle"]
