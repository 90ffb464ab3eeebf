"""SimulatedIntervener: a simulated human who takes over from a straying policy.

For human-in-the-loop RL in sim (HIL-SERL style). Each tick it asks the
scripted expert what it would do. It takes over when

* the policy's translation disagrees with the expert's for ``patience`` ticks
  in a row: with ``criterion="distance"`` when the distance between the two
  normalised translation vectors exceeds ``disagreement``; with
  ``criterion="direction"`` (a more patient operator) only when the policy heads
  more than 90 degrees away from where the expert would go (and the expert
  wants to move at all), so a different but valid path is left alone
  (``criterion="stall"`` turns this rule off: only stalls and the workspace count), or
* the task's dense progress has not improved for ``stall_steps`` ticks, or
* the TCP leaves the safety workspace box by more than ``margin``;

then it drives with the expert for ``takeover_steps`` ticks (or until the
episode succeeds) and hands control back. ``intervening`` is what the rig's
teleop node publishes on ``teleop/intervening``.
"""

from __future__ import annotations

import numpy as np


class SimulatedIntervener:
    def __init__(
        self,
        env,
        expert,
        *,
        disagreement: float = 0.9,
        patience: int = 3,
        stall_steps: int = 15,
        takeover_steps: int = 8,
        margin: float = 0.02,
        max_interventions: int | None = None,
        criterion: str = "distance",
    ) -> None:
        if patience < 1 or takeover_steps < 1 or stall_steps < 1:
            raise ValueError("patience, stall_steps and takeover_steps must be >= 1")
        if criterion not in ("distance", "direction", "stall"):
            raise ValueError(f"criterion={criterion!r}: use distance, direction or stall")
        self.criterion = criterion
        self.env = env.unwrapped
        self.expert = expert
        self.disagreement = float(disagreement)
        self.patience = int(patience)
        self.stall_steps = int(stall_steps)
        self.takeover_steps = int(takeover_steps)
        self.margin = float(margin)
        self.max_interventions = max_interventions
        ws = self.env.safety
        self._lo = np.asarray(ws.workspace_min) - self.margin
        self._hi = np.asarray(ws.workspace_max) + self.margin
        self.reset()

    def reset(self) -> None:
        self.expert.reset()
        self.intervening = False
        self.left = 0
        self.strays = 0
        self.best = -np.inf
        self.since_progress = 0
        self.count = 0  # interventions this episode
        self.steps_intervened = 0

    def _progress(self) -> None:
        v = self.env.task.dense_reward()
        if v > self.best + 1e-3:
            self.best = v
            self.since_progress = 0
        else:
            self.since_progress += 1

    def _strays(self, p: np.ndarray, e: np.ndarray) -> bool:
        if self.criterion == "stall":
            return False
        if self.criterion == "distance":
            return float(np.linalg.norm(p - e)) > self.disagreement
        ne = float(np.linalg.norm(e))
        return ne > 0.1 and float(np.dot(p, e)) < 0.0  # heading away from where the expert would go

    def step(self, obs: dict, policy_action: np.ndarray) -> tuple[np.ndarray, bool]:
        """The action to apply this tick and whether the simulated human is in control."""
        expert_action = self.expert.act(obs)  # always: keeps the expert's plan in step with the scene
        policy_action = np.asarray(policy_action, dtype=np.float32)
        self._progress()
        if self.intervening:
            self.left -= 1
            if self.left <= 0 or self.env.task.success():
                self.intervening = False
                self.since_progress = 0
                self.best = self.env.task.dense_reward()
        else:
            self.strays = self.strays + 1 if self._strays(policy_action[:3], expert_action[:3]) else 0
            ee = np.asarray(obs["state/ee_pos"])
            outside = bool(np.any(ee < self._lo) or np.any(ee > self._hi))
            allowed = self.max_interventions is None or self.count < self.max_interventions
            if allowed and (self.strays >= self.patience or self.since_progress >= self.stall_steps or outside):
                self.intervening = True
                self.left = self.takeover_steps
                self.strays = 0
                self.count += 1
        if self.intervening:
            self.steps_intervened += 1
            return expert_action, True
        return policy_action, False
