"""SimRig: MuJoCo physics + Cartesian impedance controller + cameras.

The one simulated rig that the gym envs and the ROS sim backends share. Its
controller takes the targets the franka node streams to franky's
``CartesianImpedanceTracker`` (TCP pose in the base frame, translational and
rotational stiffness, damping) with the same meaning:

    F   = -K (x - x_d) - D xdot              (error clipped, as franky does)
    tau = J^T F + N (k_n (q_home - q) - d_n qdot) + gravity/Coriolis compensation

with D = damping_ratio * 2 sqrt(K) (franky's "critical" damping), the
nullspace projector N = I - J^T J^T+ (libfranka's example), and the commanded
torque rate limited to 1 N m per ms like franky's ``max_delta_tau``. It runs at
every physics step (500 Hz at the default 2 ms step).

The gripper behaves like the Franka Hand driven by franky: ``set_gripper(width,
speed, force)`` moves the opening toward ``width`` at ``speed``; with
``force > 0`` the squeeze is limited to ``force`` (a grasp), otherwise to the
hand's 70 N.
"""

from __future__ import annotations

import atexit
import os
import weakref

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering unless the user chose otherwise

from typing import Any  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from rig.geometry import matrix_to_quat, quat_to_matrix  # noqa: E402
from rig.spec import GRIPPER_MAX_WIDTH  # noqa: E402
from sim.model import (  # noqa: E402
    ARM_JOINTS,
    FINGER_JOINTS,
    HOME_JOINTS,
    TORQUE_LIMITS,
    ObjectSpec,
    build_mjcf,
)

_MAX_FORCE = 70.0  # N, Franka Hand continuous force
_LIVE_RIGS: weakref.WeakSet = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_renderers_at_exit() -> None:
    """Free GL contexts before the interpreter tears EGL down (avoids noisy errors at exit)."""
    for rig in list(_LIVE_RIGS):
        rig._close_renderers()


def _rot_error(r: np.ndarray, r_d: np.ndarray) -> np.ndarray:
    """Rotation vector (base frame) of R R_d^T: the orientation error of R w.r.t. R_d."""
    e = r @ r_d.T
    v = 0.5 * np.array([e[2, 1] - e[1, 2], e[0, 2] - e[2, 0], e[1, 0] - e[0, 1]])
    s = np.linalg.norm(v)
    c = 0.5 * (np.trace(e) - 1.0)
    angle = np.arctan2(s, c)
    if s < 1e-9:
        return v if c > 0 else _rot_error_pi(e)
    return v * (angle / s)


def _rot_error_pi(e: np.ndarray) -> np.ndarray:
    """Rotation vector of a rotation by ~pi (rare: the target is upside down)."""
    q = matrix_to_quat(e)
    axis = q[:3] / max(np.linalg.norm(q[:3]), 1e-12)
    return axis * np.pi


class SimRig:
    """The simulated Panda + Franka Hand with its cameras.

    Life cycle: ``SimRig(...)`` stores the configuration only; ``connect()``
    compiles the model; ``close()`` frees renderers. ``model``/``data`` are the
    MuJoCo objects (tasks read object poses from them). Not thread-safe:
    callers that step and render from several threads hold one lock (as the
    ROS sim backend does).
    """

    def __init__(
        self,
        objects: tuple[ObjectSpec, ...] = (),
        *,
        visual: str = "primitive",
        timestep: float = 0.002,
        translational_stiffness: float = 2000.0,
        rotational_stiffness: float = 150.0,
        damping_ratio: float = 1.0,
        nullspace_stiffness: float = 10.0,
        home_joints: tuple[float, ...] | list[float] = HOME_JOINTS,
        translational_error_clip: float = 0.05,
        rotational_error_clip: float = 0.3,
        max_delta_tau: float = 1.0,
    ) -> None:
        if timestep > 0.002 + 1e-12:
            raise ValueError(f"timestep={timestep}: the impedance controller needs >= 500 Hz (<= 0.002 s)")
        self.objects = tuple(objects)
        self.visual = visual
        self.timestep = float(timestep)
        self.home_joints = np.asarray(home_joints, dtype=np.float64)
        if self.home_joints.shape != (7,):
            raise ValueError(f"home_joints: expected 7 values, got {self.home_joints.shape}")
        self.nullspace_stiffness = float(nullspace_stiffness)
        self.trans_clip = float(translational_error_clip)
        self.rot_clip = float(rotational_error_clip)
        self.max_delta_tau = float(max_delta_tau)
        self.set_impedance(translational_stiffness, rotational_stiffness, damping_ratio)
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._depth_renderers: dict[tuple[int, int], mujoco.Renderer] = {}

    # ------------------------------------------------------------- life cycle
    def connect(self) -> SimRig:
        if self.model is not None:
            return self
        self.model = mujoco.MjModel.from_xml_string(
            build_mjcf(self.objects, visual=self.visual, timestep=self.timestep)
        )
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._qadr = np.array([m.jnt_qposadr[m.joint(n).id] for n in ARM_JOINTS])
        self._dadr = np.array([m.jnt_dofadr[m.joint(n).id] for n in ARM_JOINTS])
        self._fadr = np.array([m.jnt_qposadr[m.joint(n).id] for n in FINGER_JOINTS])
        self._fdadr = np.array([m.jnt_dofadr[m.joint(n).id] for n in FINGER_JOINTS])
        self._tcp = m.site("tcp").id
        if not (np.array_equal(self._qadr, np.arange(7)) and np.array_equal(self._dadr, np.arange(7))
                and np.all(m.actuator_trnid[:7, 0] == m.jnt_dofadr[[m.joint(n).id for n in ARM_JOINTS]])):
            raise RuntimeError("the arm joints must come first in the model (the controller uses slices)")
        self._grip_act = m.actuator("gripper").id
        self._tau_lim = np.asarray(TORQUE_LIMITS)
        hand_bodies = {m.body(n).id for n in ("hand", "left_finger", "right_finger")}
        self._hand_mask = np.array([m.geom_bodyid[g] in hand_bodies for g in range(m.ngeom)])
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))
        self._contact_force = np.zeros(6)
        self._j = np.zeros((6, 7))
        self._err = np.zeros(6)
        self._q_cur, self._q_err, self._rv, self._y6 = np.zeros(4), np.zeros(4), np.zeros(3), np.zeros(6)
        self._clip_hi = np.array([self.trans_clip] * 3 + [self.rot_clip] * 3)
        self._clip_lo = -self._clip_hi
        self._tau_lo = -self._tau_lim
        self._dtau = self.max_delta_tau * self.timestep / 0.001
        self._ns_d = 2.0 * np.sqrt(self.nullspace_stiffness)
        self.reset()
        return self

    def _close_renderers(self) -> None:
        for r in (*self._renderers.values(), *self._depth_renderers.values()):
            r.close()
        self._renderers.clear()
        self._depth_renderers.clear()

    def close(self) -> None:
        self._close_renderers()
        self.model = None
        self.data = None

    def __enter__(self) -> SimRig:
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _need(self) -> None:
        if self.model is None:
            raise RuntimeError("SimRig is not connected: call connect() first")

    # ---------------------------------------------------------------- control
    def set_impedance(
        self,
        translational_stiffness: float | None = None,
        rotational_stiffness: float | None = None,
        damping_ratio: float | None = None,
    ) -> None:
        """Stiffness (N/m, N m/rad) and damping ratio (1 = franky's critical damping)."""
        if translational_stiffness is not None:
            self.k_t = float(translational_stiffness)
        if rotational_stiffness is not None:
            self.k_r = float(rotational_stiffness)
        if damping_ratio is not None:
            self.damping_ratio = float(damping_ratio)
        for name, v in (("translational_stiffness", self.k_t), ("rotational_stiffness", self.k_r),
                        ("damping_ratio", self.damping_ratio)):
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name}={v}: must be finite and >= 0")
        self.d_t = self.damping_ratio * 2.0 * np.sqrt(self.k_t)
        self.d_r = self.damping_ratio * 2.0 * np.sqrt(self.k_r)
        self._k = np.array([self.k_t] * 3 + [self.k_r] * 3)
        self._dmp = np.array([self.d_t] * 3 + [self.d_r] * 3)

    def set_cartesian_target(self, pos: np.ndarray, quat: np.ndarray) -> None:
        """Absolute TCP target in the base frame; quaternion (x, y, z, w)."""
        pos = np.array(pos, dtype=np.float64)  # a copy
        quat = np.asarray(quat, dtype=np.float64)
        if pos.shape != (3,) or quat.shape != (4,) or not np.isfinite(pos.sum() + quat.sum()):
            raise ValueError(f"target must be finite pos (3,) and quat (4,), got {pos!r}, {quat!r}")
        n = float(np.sqrt(quat @ quat))
        if n < 1e-12:
            raise ValueError(f"target quaternion {quat!r} has zero norm")
        # MuJoCo's C helpers (w, x, y, z): the safety filter sets a target every tick, numpy would dominate
        wxyz = np.array((quat[3], quat[0], quat[1], quat[2])) / n
        rot = np.empty(9)
        mujoco.mju_quat2Mat(rot, wxyz)
        self.target_pos = pos
        self._set_target_rot(rot.reshape(3, 3))

    def _set_target_rot(self, r: np.ndarray) -> None:
        self.target_rot = np.asarray(r, dtype=np.float64)
        q = np.zeros(4)
        mujoco.mju_mat2Quat(q, self.target_rot.reshape(-1))
        self._q_dneg = np.zeros(4)
        mujoco.mju_negQuat(self._q_dneg, q)

    @property
    def target_quat(self) -> np.ndarray:
        """The current TCP target orientation, (x, y, z, w)."""
        return matrix_to_quat(self.target_rot)

    def set_gripper(self, width: float, speed: float = 0.1, force: float = 0.0) -> None:
        """Move the opening to ``width`` (m) at ``speed`` (m/s); ``force > 0`` grasps with that force (N)."""
        self._need()
        if not np.isfinite(width) or not np.isfinite(speed) or speed <= 0:
            raise ValueError(f"gripper command width={width}, speed={speed}: need finite width and speed > 0")
        self.gripper_target = float(np.clip(width, 0.0, GRIPPER_MAX_WIDTH))
        self.gripper_speed = float(speed)
        f = float(force) if force > 0 else _MAX_FORCE
        self.model.actuator_forcerange[self._grip_act] = (-min(f, _MAX_FORCE), min(f, _MAX_FORCE))

    def reset(self, joint_pos: np.ndarray | None = None, gripper_width: float = GRIPPER_MAX_WIDTH) -> None:
        """Arm to ``joint_pos`` (home by default) at rest, target = the current TCP pose."""
        self._need()
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        q = self.home_joints if joint_pos is None else np.asarray(joint_pos, dtype=np.float64)
        d.qpos[self._qadr] = q
        d.qpos[self._fadr] = gripper_width / 2
        mujoco.mj_forward(m, d)
        self.target_pos = d.site_xpos[self._tcp].copy()
        self._set_target_rot(d.site_xmat[self._tcp].reshape(3, 3).copy())
        self._tau_prev = np.zeros(7)
        self.gripper_target = float(gripper_width)
        self.gripper_speed = 0.1
        d.ctrl[self._grip_act] = gripper_width
        self.model.actuator_forcerange[self._grip_act] = (-_MAX_FORCE, _MAX_FORCE)

    def _control(self) -> None:
        """One controller cycle (lean: slices, preallocated buffers and MuJoCo's C helpers)."""
        m, d = self.model, self.data
        mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self._tcp)
        j = self._j
        j[:3] = self._jacp[:, :7]
        j[3:] = self._jacr[:, :7]
        dq = d.qvel[:7]
        e = self._err
        np.subtract(d.site_xpos[self._tcp], self.target_pos, out=e[:3])
        # orientation error as a base-frame rotation vector of R R_d^T (via quaternions)
        mujoco.mju_mat2Quat(self._q_cur, d.site_xmat[self._tcp])
        mujoco.mju_mulQuat(self._q_err, self._q_cur, self._q_dneg)
        if self._q_err[0] < 0:
            self._q_err *= -1.0
        mujoco.mju_quat2Vel(self._rv, self._q_err, 1.0)
        e[3:] = self._rv
        np.minimum(np.maximum(e, self._clip_lo, out=e), self._clip_hi, out=e)
        jt = j.T
        f = -self._k * e - self._dmp * (j @ dq)
        # nullspace posture toward home: N = I - J^T pinv(J^T), pinv(J^T) = (J J^T)^-1 J
        tns = self.nullspace_stiffness * (self.home_joints - d.qpos[:7]) - self._ns_d * dq
        jjt = j @ jt
        jjt.flat[::7] += 1e-6
        mujoco.mju_cholFactor(jjt, 0.0)
        mujoco.mju_cholSolve(self._y6, jjt, j @ tns)
        tau = jt @ (f - self._y6) + tns
        # torque rate limit (franky's max_delta_tau per 1 ms cycle)
        prev = self._tau_prev
        tau = np.minimum(np.maximum(tau, prev - self._dtau), prev + self._dtau)
        self._tau_prev = tau
        np.minimum(np.maximum(tau + d.qfrc_bias[:7], self._tau_lo), self._tau_lim, out=d.ctrl[:7])
        # gripper: move the servo set point toward the target at the commanded speed
        c = d.ctrl[self._grip_act]
        dmax = self.gripper_speed * self.timestep
        g = self.gripper_target
        d.ctrl[self._grip_act] = g if abs(g - c) <= dmax else c + (dmax if g > c else -dmax)

    def step(self, n: int = 1) -> None:
        """Advance ``n`` physics steps, running the controller inside each.

        ``mj_step1`` computes kinematics and bias forces for the current state,
        the controller reads them, ``mj_step2`` applies the torques and
        integrates: the controller never sees stale kinematics.
        """
        self._need()
        m, d = self.model, self.data
        for _ in range(int(n)):
            mujoco.mj_step1(m, d)
            self._control()
            mujoco.mj_step2(m, d)

    # ------------------------------------------------------------------ state
    @property
    def time(self) -> float:
        return float(self.data.time)

    @property
    def ee_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._tcp].copy()

    @property
    def ee_rot(self) -> np.ndarray:
        return self.data.site_xmat[self._tcp].reshape(3, 3).copy()

    @property
    def gripper_width(self) -> float:
        return float(np.sum(self.data.qpos[self._fadr]))

    def ee_wrench(self) -> np.ndarray:
        """External wrench on the hand and fingers (force N, torque N m about the TCP), base frame."""
        m, d = self.model, self.data
        w = np.zeros(6)
        if d.ncon == 0:
            return w
        geoms = d.contact.geom[: d.ncon]
        hand = self._hand_mask[geoms]
        rows = np.nonzero(hand[:, 0] != hand[:, 1])[0]
        if rows.size == 0:
            return w
        tcp = d.site_xpos[self._tcp]
        f6 = self._contact_force
        for i in rows:
            mujoco.mj_contactForce(m, d, int(i), f6)
            frame = d.contact.frame[i].reshape(3, 3)  # rows: normal (geom1 -> geom2) and tangents
            fw = frame.T @ f6[:3]  # force on geom2, world frame
            if hand[i, 0]:
                fw = -fw  # the hand is geom1: it feels the reaction
            w[:3] += fw
            w[3:] += np.cross(d.contact.pos[i] - tcp, fw)
        return w

    def state(self) -> dict[str, np.ndarray]:
        """Spec state keys (``state/*``, fresh float32 arrays) plus rig extras.

        Extras for the ROS backends: ``time`` (s, sim time), ``gripper_velocity``
        (m/s, opening rate), ``gripper_force`` (N, squeeze), ``joint_torque``
        (N m, commanded arm torques without gravity, like libfranka's tau_J_d).
        """
        self._need()
        d = self.data
        return {
            "state/ee_pos": self.ee_pos.astype(np.float32),
            "state/ee_quat": matrix_to_quat(self.ee_rot).astype(np.float32),
            "state/gripper_width": np.array([self.gripper_width], dtype=np.float32),
            "state/joint_pos": d.qpos[:7].astype(np.float32),
            "state/joint_vel": d.qvel[:7].astype(np.float32),
            "state/ee_wrench": self.ee_wrench().astype(np.float32),
            "time": np.array([d.time], dtype=np.float64),
            "gripper_velocity": np.array([d.qvel[self._fdadr].sum()], dtype=np.float32),
            "gripper_force": np.array([abs(d.actuator_force[self._grip_act])], dtype=np.float32),
            "joint_torque": self._tau_prev.astype(np.float32),
        }

    # -------------------------------------------------------------- kinematics
    def solve_ik(
        self, pos: np.ndarray, quat: np.ndarray, q0: np.ndarray | None = None, iters: int = 100
    ) -> np.ndarray:
        """Joint angles putting the TCP at (pos, quat): damped least squares with a posture bias.

        Uses a scratch MjData so the simulation state is untouched.
        """
        self._need()
        m = self.model
        d = mujoco.MjData(m)
        q = (self.home_joints if q0 is None else np.asarray(q0, dtype=np.float64)).copy()
        r_d = quat_to_matrix(quat)
        lo, hi = m.jnt_range[[m.joint(n).id for n in ARM_JOINTS]].T
        jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        for _ in range(iters):
            d.qpos[self._qadr] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            err = np.concatenate([
                np.asarray(pos) - d.site_xpos[self._tcp],
                -_rot_error(d.site_xmat[self._tcp].reshape(3, 3), r_d),
            ])
            if np.linalg.norm(err[:3]) < 1e-5 and np.linalg.norm(err[3:]) < 1e-4:
                break
            mujoco.mj_jacSite(m, d, jacp, jacr, self._tcp)
            j = np.vstack([jacp[:, self._dadr], jacr[:, self._dadr]])
            dq = j.T @ np.linalg.solve(j @ j.T + 1e-4 * np.eye(6), err)
            ns = np.eye(7) - np.linalg.pinv(j) @ j
            dq += ns @ (0.1 * (self.home_joints - q))
            q = np.clip(q + dq, lo, hi)
        return q

    def reset_to_pose(self, pos: np.ndarray, quat: np.ndarray, gripper_width: float = GRIPPER_MAX_WIDTH) -> None:
        """Reset with the TCP at (pos, quat) (inverse kinematics from home)."""
        self.reset(self.solve_ik(pos, quat), gripper_width)
        self.target_pos = np.asarray(pos, dtype=np.float64).copy()
        self._set_target_rot(quat_to_matrix(quat))

    # -------------------------------------------------------------- rendering
    def render(self, camera: str, width: int = 128, height: int = 128, depth: bool = False) -> np.ndarray:
        """RGB (H, W, 3) uint8, or depth (H, W) uint16 in mm with ``depth=True``. A fresh array."""
        self._need()
        if self.model.camera(camera).id < 0:  # pragma: no cover - camera() raises KeyError itself
            raise KeyError(camera)
        cache = self._depth_renderers if depth else self._renderers
        key = (int(height), int(width))
        r = cache.get(key)
        if r is None:
            r = mujoco.Renderer(self.model, height=key[0], width=key[1])
            global _ATEXIT_REGISTERED
            if not _ATEXIT_REGISTERED:  # after the first GL context: runs before MuJoCo's eglTerminate
                atexit.register(_close_renderers_at_exit)
                _ATEXIT_REGISTERED = True
            _LIVE_RIGS.add(self)
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX, mujoco.mjtRndFlag.mjRND_FOG):
                r.scene.flags[flag] = False
            if depth:
                r.enable_depth_rendering()
            cache[key] = r
        r.update_scene(self.data, camera=camera)
        img = r.render()
        if depth:
            return np.clip(img * 1000.0, 0, 65535).astype(np.uint16)
        return img.copy()

    def camera_names(self) -> tuple[str, ...]:
        self._need()
        return tuple(self.model.camera(i).name for i in range(self.model.ncam))
