"""PandaRigEnv: a gymnasium env over SimRig with the rig spec's observations and actions.

One control step (``control_hz``, 10 Hz default as in HIL-SERL): the 7-d
normalised action becomes an absolute TCP target with
:meth:`rig.spec.ActionSpec.to_target` around the measured TCP pose
(``action_origin="measured"``, the default: the scripted operators are
closed-loop on the measured pose) or around the commanded pose
(``"commanded"``: the safety filter's applied command, as the ROS env adapter
steps from the franka node's ``command_applied``), and the target goes through the same
:class:`rig.safety.SafetyFilter` as on the rig's franka node: clipped into the
workspace box and the tilt cone, then approached by rate-limited steps, one
filter tick every ``1 / filter_hz`` s (the franka node's ``state_rate_hz``,
500 Hz by default), each followed by the physics steps of that tick with the
impedance controller. The gripper command is clipped by the same filter. So an
action means the same in sim as on the rig. Cameras render only when listed
(``cameras=()``: state only).

``info``: ``is_success``, ``dense_reward`` (diagnostic shaping), ``task_id``.
The reward is the sparse success (1.0 on success, else 0.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rig.geometry import matrix_to_quat
from rig.safety import SafetyConfig, SafetyFilter
from rig.spec import ActionSpec, CameraSpec, RigSpec
from sim import registry
from sim.config import RandomizationConfig
from sim.rig import SimRig
from sim.tasks import TaskDef, make_task


def _camera_specs(cameras: Sequence[Any], image_size: int | Sequence[int], depth: bool) -> tuple[CameraSpec, ...]:
    if isinstance(image_size, int):
        h, w = image_size, image_size
    else:
        h, w = (int(v) for v in image_size)
    out = []
    for c in cameras:
        if isinstance(c, CameraSpec):
            out.append(c)
        elif isinstance(c, str):
            out.append(CameraSpec(c, h, w, depth))
        else:
            raise TypeError(f"cameras: expected names or CameraSpec, got {c!r}")
    return tuple(out)


class PandaRigEnv(gym.Env):
    """A language-conditioned task on the simulated rig (see :mod:`sim.registry` for the ids)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str | TaskDef = "PandaRig/LiftCube-Red-v0",
        *,
        cameras: Sequence[str | CameraSpec] = ("front", "wrist"),
        image_size: int | Sequence[int] = 128,
        depth: bool = False,
        control_hz: float = 10.0,
        physics_hz: float = 500.0,
        max_translation: float = 0.02,
        max_rotation: float = 0.1,
        randomization: RandomizationConfig | dict | None = None,
        privileged_state: bool = False,
        terminate_on_success: bool = True,
        visual: str = "primitive",
        translational_stiffness: float = 2000.0,
        rotational_stiffness: float = 150.0,
        damping_ratio: float = 1.0,
        gripper_speed: float = 0.1,
        gripper_force: float = 20.0,
        safety: SafetyConfig | None = None,
        filter_hz: float = 500.0,
        action_origin: str = "measured",
        render_mode: str | None = None,
        render_size: tuple[int, int] = (480, 640),
    ) -> None:
        self.tdef = task if isinstance(task, TaskDef) else registry.get(task)
        if physics_hz < 500:
            raise ValueError(f"physics_hz={physics_hz}: the impedance controller needs >= 500 Hz")
        n_sub = physics_hz / control_hz
        if abs(n_sub - round(n_sub)) > 1e-6 or n_sub < 1:
            raise ValueError(f"physics_hz / control_hz = {n_sub}: must be a positive integer")
        self.n_substeps = int(round(n_sub))
        per_tick = physics_hz / filter_hz if filter_hz > 0 else 0.0
        ticks = filter_hz / control_hz
        if per_tick < 1 or abs(per_tick - round(per_tick)) > 1e-6 or abs(ticks - round(ticks)) > 1e-6:
            raise ValueError(f"filter_hz={filter_hz}: the safety filter rate must divide physics_hz={physics_hz} "
                             f"and be a multiple of control_hz={control_hz}")
        self.physics_per_tick = int(round(per_tick))
        self.filter_ticks = int(round(ticks))
        if isinstance(randomization, dict):
            randomization = RandomizationConfig(**randomization)
        self.randomization = randomization or RandomizationConfig()
        cams = _camera_specs(cameras, image_size, depth)
        self.spec_rig = RigSpec(
            cameras=cams,
            action=ActionSpec(max_translation=max_translation, max_rotation=max_rotation, control_hz=control_hz),
        )
        self.task = make_task(self.tdef)
        self.rig = SimRig(
            self.task.objects(), visual=visual, timestep=1.0 / physics_hz,
            translational_stiffness=translational_stiffness, rotational_stiffness=rotational_stiffness,
            damping_ratio=damping_ratio,
        ).connect()
        self.task.bind(self.rig)
        for c in cams:
            if c.name not in self.rig.camera_names():
                raise ValueError(f"camera {c.name!r} is not in the sim model; available: {self.rig.camera_names()}")
        self.privileged_state = bool(privileged_state)
        self.terminate_on_success = bool(terminate_on_success)
        self.gripper_speed = float(gripper_speed)
        self.gripper_force = float(gripper_force)
        self.safety = safety or SafetyConfig()
        self.safety_filter = SafetyFilter(self.safety, 1.0 / filter_hz)  # validates the config
        if action_origin not in ("commanded", "measured"):
            raise ValueError(f"action_origin={action_origin!r}: commanded (the filter's applied command, as on "
                             "the rig) or measured (the TCP pose)")
        self.action_origin = action_origin
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: only 'rgb_array' is supported")
        self.render_mode = render_mode
        self.render_size = tuple(render_size)

        obs_spaces: dict[str, spaces.Space] = {}
        for key, s in self.spec_rig.observation_specs().items():
            if s.dtype == "uint8":
                obs_spaces[key] = spaces.Box(0, 255, s.shape, np.uint8)
            elif s.dtype == "uint16":
                obs_spaces[key] = spaces.Box(0, 65535, s.shape, np.uint16)
            else:
                obs_spaces[key] = spaces.Box(-np.inf, np.inf, s.shape, np.float32)
        if self.privileged_state:
            n = self._privileged_now().shape
            obs_spaces["state/privileged"] = spaces.Box(-np.inf, np.inf, n, np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (self.spec_rig.action.dim,), np.float32)
        self._defaults = None
        self._last_success = False

    # ------------------------------------------------------------ properties
    @property
    def instruction(self) -> str:
        return self.tdef.instruction

    @property
    def task_group(self) -> str:
        return self.tdef.group

    @property
    def task_id(self) -> str:
        return self.tdef.task_id

    @property
    def rig_spec(self) -> RigSpec:
        return self.spec_rig

    # ------------------------------------------------------------ internals
    def _privileged_now(self) -> np.ndarray:
        return self.task.privileged().astype(np.float32)

    def _randomize_scene(self, rng: np.random.Generator) -> None:
        m, r = self.rig.model, self.randomization
        if self._defaults is None:
            self._defaults = dict(friction=m.geom_friction.copy(), diffuse=m.light_diffuse.copy(),
                                  cam=m.cam_pos.copy(), rgba=m.geom_rgba.copy())
        dflt = self._defaults
        m.geom_rgba[:] = dflt["rgba"]  # colour jitter never accumulates over resets
        m.geom_friction[:] = dflt["friction"]
        m.light_diffuse[:] = dflt["diffuse"]
        m.cam_pos[:] = dflt["cam"]
        lo, hi = r.friction_range
        if hi > lo or lo != 1.0:
            m.geom_friction[:, 0] = dflt["friction"][:, 0] * rng.uniform(lo, hi)
        if r.light_jitter > 0:
            m.light_diffuse[:] = dflt["diffuse"] * rng.uniform(1 - r.light_jitter, 1 + r.light_jitter,
                                                               (m.nlight, 1))
        if r.camera_jitter > 0:
            front = m.camera("front").id
            m.cam_pos[front] = dflt["cam"][front] + rng.uniform(-r.camera_jitter, r.camera_jitter, 3)

    def _jitter_colors(self, rng: np.random.Generator) -> None:
        j = self.randomization.color_jitter
        if j <= 0:
            return
        m = self.rig.model
        for o in self.task.objects():
            for g in np.where(m.geom_bodyid == m.body(o.name).id)[0]:
                m.geom_rgba[g, :3] = np.clip(m.geom_rgba[g, :3] + rng.uniform(-j, j, 3), 0.0, 1.0)

    def _obs(self) -> dict[str, np.ndarray]:
        st = {k: v for k, v in self.rig.state().items() if k.startswith("state/")}
        for c in self.spec_rig.cameras:
            st[f"images/{c.name}"] = self.rig.render(c.name, c.width, c.height)
            if c.depth:
                st[f"depth/{c.name}"] = self.rig.render(c.name, c.width, c.height, depth=True)
        if self.privileged_state:
            st["state/privileged"] = self._privileged_now()
        return st

    def _info(self) -> dict[str, Any]:
        return {
            "is_success": self._last_success,
            "dense_reward": self.task.dense_reward(),
            "task_id": self.tdef.task_id,
        }

    # ----------------------------------------------------------------- API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        self._randomize_scene(rng)
        randomize = self.randomization.object_poses
        start = self.task.start_pose(rng, randomize)
        if start is not None:
            self.rig.reset_to_pose(*start)
        self.task.reset(rng, randomize)
        self._jitter_colors(rng)
        self.rig.set_gripper(self.rig.gripper_target, self.gripper_speed, self.gripper_force)
        if start is None:  # the task posed the arm and gripper itself (e.g. peg in hand)
            self.rig.set_gripper(0.0, self.gripper_speed, self.gripper_force)
        self.rig.step(25)  # 50 ms: objects settle, a grasp closes
        # as the franka node does on (re)connect: the filter starts from the measured pose, no target in force
        self.safety_filter.reset(self.rig.ee_pos, matrix_to_quat(self.rig.ee_rot))
        self._last_success = self.task.success()
        return self._obs(), self._info()

    def step(self, action: np.ndarray):
        a = self.spec_rig.action.check(np.asarray(action, dtype=np.float32))
        f = self.safety_filter
        if self.action_origin == "commanded":
            origin = f.applied_pose
        else:
            origin = (self.rig.ee_pos, matrix_to_quat(self.rig.ee_rot))
        pos, quat, width = self.spec_rig.action.to_target(a, *origin)
        now = self.rig.time
        f.set_target(pos, quat, now)
        g = f.gripper(width, self.gripper_speed, self.gripper_force)
        self.rig.set_gripper(g.width, g.speed, g.force)
        dt = f.dt
        for i in range(self.filter_ticks):  # the franka node's control loop: filter tick, command, physics
            applied = f.step(now + i * dt, dt)
            self.rig.set_cartesian_target(applied.pos, applied.quat)
            self.rig.step(self.physics_per_tick)
        self._last_success = self.task.success()
        reward = 1.0 if self._last_success else 0.0
        terminated = self._last_success and self.terminate_on_success
        return self._obs(), reward, terminated, False, self._info()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        h, w = self.render_size
        return self.rig.render("front", w, h)

    def close(self) -> None:
        self.rig.close()

    def config(self) -> dict[str, Any]:
        """What this env was made with (for episode metadata)."""
        return {"task_id": self.tdef.task_id, "instruction": self.instruction, "task_group": self.task_group,
                "n_substeps": self.n_substeps, "randomization": asdict(self.randomization),
                "rig_spec": self.spec_rig.to_dict()}
