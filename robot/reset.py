"""Reset routines: what sets the task up again between two rig episodes (:class:`robot.env.RosRigEnv`'s ``task_reset``).

:meth:`RosRigEnv.reset` homes the arm, then calls the routine, then publishes ``episode/event`` ``start``.
Kinds (``ResetConfig.kind``):

* ``none``: homing only (the env's behaviour without a routine);
* ``scripted``: "put down what you hold". When the gripper is closed (narrower than ``hold_below``: it may hold
  something), carry it to a random spot of the ``workspace_min`` .. ``workspace_max`` box (drawn from the env's
  episode seed), lower to the box's floor, open, lift to the box's top, and home again. An open gripper holds
  nothing: the routine does nothing. The motion goes through the env's targets, so the franka node's safety
  filter applies to it as to any policy;
* ``operator``: the operator resets the scene by hand. The env publishes ``prompt`` on ``reset/prompt``
  (std_msgs/String, latched; the teleop node logs it in the ``rig-up`` terminal) and waits up to
  ``operator_timeout`` s for the operator's confirmation, ``episode/event`` ``reset`` (keyboard ``b``,
  gamepad Y, the console's reset button); ``abort`` stops the run. The prompt is withdrawn (``""``) after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from rig.spec import GRIPPER_MAX_WIDTH

RESET_KINDS = ("none", "scripted", "operator")
CONFIRM, ABORT = "reset", "abort"  # the operator's episode/event answers to a prompt


class ResetTimeout(RuntimeError):
    """The operator did not confirm the reset in time."""


class ResetAborted(RuntimeError):
    """The operator answered the reset prompt with ``abort``."""


@dataclass
class ResetConfig:
    kind: str = "none"  # none | scripted | operator
    # scripted: where to put down what the gripper holds (TCP position box, m, base frame; inside the safety box)
    workspace_min: list[float] = field(default_factory=lambda: [0.4, -0.15, 0.03])
    workspace_max: list[float] = field(default_factory=lambda: [0.6, 0.15, 0.15])
    hold_below: float = 0.075  # m: a gripper narrower than this may hold something (open: 0.08)
    tolerance: float = 0.01  # m: a waypoint is reached within this distance
    move_timeout: float = 15.0  # s per waypoint
    # operator
    prompt: str = ("Reset the scene for the next episode, then confirm with reset "
                   "(keyboard b, gamepad Y, or the console)")
    operator_timeout: float = 600.0  # s to wait for the confirmation


class ResetRoutine(Protocol):
    """A ``task_reset`` of :class:`robot.env.RosRigEnv`: called with the env after homing."""

    def __call__(self, env: Any) -> None: ...


def check_reset_config(cfg: ResetConfig, prefix: str = "reset") -> ResetConfig:
    """Validate ``cfg``; the error names the field as ``<prefix>.<field>``."""
    def fail(name: str, why: str) -> None:
        raise ValueError(f"{prefix}.{name}={getattr(cfg, name)!r}: {why}")

    if cfg.kind not in RESET_KINDS:
        fail("kind", f"use one of {', '.join(RESET_KINDS)}")
    for name in ("workspace_min", "workspace_max"):
        v = list(getattr(cfg, name))
        if len(v) != 3 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
            fail(name, "must be 3 finite numbers [x, y, z] in m")
    lo, hi = np.asarray(cfg.workspace_min, float), np.asarray(cfg.workspace_max, float)
    if not np.all(lo < hi):
        fail("workspace_min", f"must be below workspace_max {list(cfg.workspace_max)} on every axis")
    if not 0 < cfg.hold_below <= GRIPPER_MAX_WIDTH:
        fail("hold_below", f"must be in (0, {GRIPPER_MAX_WIDTH}] m")
    for name in ("tolerance", "move_timeout", "operator_timeout"):
        if not getattr(cfg, name) > 0:
            fail(name, "must be > 0")
    if cfg.kind == "operator" and not cfg.prompt.strip():
        fail("prompt", "must say what the operator should do")
    return cfg


class ScriptedReset:
    """Put down what the gripper holds at a random spot of the box, lift, home (see the module docstring)."""

    def __init__(self, cfg: ResetConfig):
        self.cfg = check_reset_config(cfg)
        self.lo = np.asarray(cfg.workspace_min, np.float64)
        self.hi = np.asarray(cfg.workspace_max, np.float64)
        self.runs = 0  # put-down motions made

    def plan(self, rng: np.random.Generator) -> list[tuple[np.ndarray, float | None]]:
        """Waypoints (TCP position, gripper width or None: keep the grasp): above a random spot, down, open, up."""
        x, y = rng.uniform(self.lo[:2], self.hi[:2])
        above, down = np.array([x, y, self.hi[2]]), np.array([x, y, self.lo[2]])
        return [(above, None), (down, None), (down, GRIPPER_MAX_WIDTH), (above, GRIPPER_MAX_WIDTH)]

    def __call__(self, env: Any) -> None:
        _, quat, width = env.pose()
        if width >= self.cfg.hold_below:
            return  # open: nothing to put down
        for pos, w in self.plan(env.np_random):
            env.move_to(pos, quat, w, tolerance=self.cfg.tolerance, timeout=self.cfg.move_timeout)
        env.home()
        self.runs += 1


class OperatorReset:
    """Prompt the operator and wait for the confirmation (see the module docstring)."""

    def __init__(self, cfg: ResetConfig):
        self.cfg = check_reset_config(cfg)
        self.prompts = 0

    def __call__(self, env: Any) -> None:
        env.clear_events()  # an earlier reset event is no answer to this prompt
        env.prompt(self.cfg.prompt)
        self.prompts += 1
        try:
            ev = env.wait_event((CONFIRM, ABORT), self.cfg.operator_timeout)
        finally:
            env.prompt("")
        if ev is None:
            raise ResetTimeout(
                f"the operator did not confirm the reset within operator_timeout={self.cfg.operator_timeout} s: "
                f"the prompt was on reset/prompt; confirm with episode/event {CONFIRM!r} (keyboard b, gamepad Y, "
                "the console), or raise operator_timeout")
        if ev == ABORT:
            raise ResetAborted("the operator answered the reset prompt with abort: the run stops")


def make_reset(cfg: ResetConfig, prefix: str = "reset") -> ResetRoutine | None:
    """The routine of ``cfg.kind`` (None for ``none``: homing only), after validating ``cfg``."""
    check_reset_config(cfg, prefix)
    if cfg.kind == "scripted":
        return ScriptedReset(cfg)
    if cfg.kind == "operator":
        return OperatorReset(cfg)
    return None
