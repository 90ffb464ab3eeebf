"""The agent's action coding: SAC's arm dims plus a discrete gripper choice, to and from the 7-d spec action.

HIL-SERL's gripper critic picks one of three discrete gripper actions (open,
stay, close); :func:`compose_action` turns the arm action and that choice into
the 7-d spec action (open = +1, close = -1, stay = the gripper command in
force), and :func:`gripper_label` explains a continuous command (a demo's, an
operator's) as one of the three. numpy only.
"""

from __future__ import annotations

import numpy as np

# Discrete gripper actions (indices of the gripper critic's outputs).
GRIP_OPEN, GRIP_STAY, GRIP_CLOSE = 0, 1, 2
GRIP_NAMES = ("open", "stay", "close")
ARM_DIMS = 6  # translation (3) + rotation vector (3) of the spec action


def gripper_label(command: float, previous: float, threshold: float = 0.5) -> int:
    """Discrete gripper action that explains a continuous command given the previous one."""
    if abs(float(command) - float(previous)) <= threshold:
        return GRIP_STAY
    return GRIP_OPEN if command > previous else GRIP_CLOSE


def compose_action(arm: np.ndarray, arm_dims: list[int], grip: int, current_gripper: float) -> np.ndarray:
    """The 7-d spec action: SAC's arm dims (others 0) + the gripper choice.

    open -> +1, close -> -1, stay -> ``current_gripper`` (the gripper command in force).
    """
    a = np.zeros(7, np.float32)
    a[list(arm_dims)] = np.clip(np.asarray(arm, np.float32).reshape(-1), -1.0, 1.0)
    if grip == GRIP_OPEN:
        a[6] = 1.0
    elif grip == GRIP_CLOSE:
        a[6] = -1.0
    elif grip == GRIP_STAY:
        a[6] = float(np.clip(current_gripper, -1.0, 1.0))
    else:
        raise ValueError(f"gripper action {grip!r} is not one of 0 (open), 1 (stay), 2 (close)")
    return a
