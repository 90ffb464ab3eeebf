"""What the operator's console knows about the rig and the session: a pure model, fed by the node.

:class:`ConsoleState` takes the graph's events (``episode/event``, ``teleop/intervening``,
``policy/instruction``, ``reset/prompt``, ``/diagnostics`` statuses, arm state) with their times and gives a
JSON-ready :meth:`~ConsoleState.snapshot`: who is in control (``holding`` when the franka node
holds, else ``operator`` while ``teleop/intervening`` is True, else ``policy``), the episode
timer, the safety filter's counts, the session counters (episodes, successes, failures,
interventions per episode, operator time), what the rig asks the operator now (``prompt``: reset the scene,
or confirm / reject a success the classifier claims) and which successes the reward classifier called
(:meth:`~ConsoleState.classifier_success_starts`). Thread-safe; no ROS.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EVENTS = ("start", "success", "failure", "reset", "abort")
LEVELS = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}
MAX_INSTRUCTION = 10_000  # characters (the recorder's limit)
REWARD_HISTORY = 600  # reward/probability samples kept (a minute at 10 Hz)
CALL_WINDOW = (-1.0, 0.5)  # s around a success event in which the classifier's call counts


@dataclass
class Session:
    episodes: int = 0  # ended with success, failure or reset
    successes: int = 0
    failures: int = 0
    aborted: int = 0
    interventions: int = 0  # operator take-overs during episodes
    operator_time: float = 0.0  # s the operator had control
    interventions_per_episode: list[int] = field(default_factory=list)


def _num(v: str) -> Any:
    if v in ("True", "False"):
        return v == "True"
    try:
        f = float(v)
    except ValueError:
        return v
    return f if math.isfinite(f) else None


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


class ConsoleState:
    def __init__(self, task: str = "") -> None:
        self._lock = threading.Lock()
        self.task = task
        self.instruction = ""
        self.prompt = ""  # what the rig asks the operator now (reset/prompt; "" when nothing)
        self.session = Session()
        self.intervening = False
        self._intervening_since: float | None = None
        self.episode_active = False
        self.episode_start: float | None = None
        self.episode_end: float | None = None
        self.last_outcome = ""
        self._episode_interventions = 0
        self.statuses: dict[str, dict[str, Any]] = {}
        self.arm: dict[str, Any] = {}
        self.last_action = ""
        self.reward: tuple[float, float] | None = None  # (probability, time) from reward/probability
        self.threshold: float | None = None
        self._rewards: deque[tuple[float, float]] = deque(maxlen=REWARD_HISTORY)
        self._successes: list[tuple[float, float]] = []  # (episode start, success time), not yet judged
        self._classifier_starts: list[float] = []

    # ------------------------------------------------------------------ inputs
    def on_event(self, event: str, t: float) -> None:
        if event not in EVENTS:
            raise ValueError(f"episode/event {event[:40]!r}: expected one of {EVENTS}")
        with self._lock:
            s = self.session
            if event == "start":
                if self.episode_active:  # a start without an end: the recorder keeps it unlabelled
                    self._end(t, "reset")
                self.episode_active, self.episode_start, self.episode_end = True, t, None
                self._episode_interventions = 1 if self.intervening else 0
                if self.intervening:
                    s.interventions += 1
                return
            if not self.episode_active:
                return  # an end without a start (a second click): nothing to count
            if event == "abort":
                s.aborted += 1
                self.episode_active, self.episode_end, self.last_outcome = False, t, "abort"
                return
            self._end(t, event)

    def _end(self, t: float, outcome: str) -> None:
        if outcome == "success" and self.episode_start is not None:
            self._successes.append((self.episode_start, t))
        s = self.session
        s.episodes += 1
        s.successes += outcome == "success"
        s.failures += outcome == "failure"
        s.interventions_per_episode.append(self._episode_interventions)
        self.episode_active, self.episode_end, self.last_outcome = False, t, outcome

    def on_intervening(self, flag: bool, t: float) -> None:
        with self._lock:
            if flag and not self.intervening:
                self._intervening_since = t
                if self.episode_active:
                    self._episode_interventions += 1
                    self.session.interventions += 1
            elif not flag and self.intervening and self._intervening_since is not None:
                self.session.operator_time += max(0.0, t - self._intervening_since)
                self._intervening_since = None
            self.intervening = bool(flag)

    def on_instruction(self, text: str) -> None:
        if len(text) > MAX_INSTRUCTION:
            raise ValueError(f"instruction of {len(text)} characters: at most {MAX_INSTRUCTION}")
        with self._lock:
            self.instruction = text

    def on_prompt(self, text: str) -> None:
        with self._lock:
            self.prompt = text[:MAX_INSTRUCTION]

    def on_status(self, name: str, level: int, message: str, values: Mapping[str, str]) -> None:
        """One /diagnostics status (name as published, e.g. ``/franka: franka``)."""
        with self._lock:
            self.statuses[name] = {"level": LEVELS.get(int(level), str(level)), "message": message[:200],
                                   "values": {k: _num(v) for k, v in list(values.items())[:64]}}

    def on_reward(self, probability: float, t: float) -> None:
        """The reward classifier's success probability on the latest observation (reward/probability)."""
        with self._lock:
            self.reward = (float(probability), t)
            self._rewards.append((t, float(probability)))

    def on_threshold(self, threshold: float) -> None:
        with self._lock:
            self.threshold = float(threshold)

    def classifier_success_starts(self, now: float) -> list[float]:
        """Start times of the episodes whose success the reward classifier called.

        A success counts as the classifier's when ``reward/probability`` reached ``reward/threshold``
        within :data:`CALL_WINDOW` s of the success event (the env adapter publishes the probability,
        then the event); a success is judged once that window has passed.
        """
        with self._lock:
            keep = []
            for start, ts in self._successes:
                if now < ts + CALL_WINDOW[1]:
                    keep.append((start, ts))
                elif self.threshold is not None and any(
                        ts + CALL_WINDOW[0] <= t <= ts + CALL_WINDOW[1] and p >= self.threshold
                        for t, p in self._rewards):
                    self._classifier_starts.append(start)
            self._successes = keep
            return list(self._classifier_starts)

    def on_arm(self, **values: Any) -> None:
        """Arm state for display (joint positions, TCP position, gripper width...)."""
        with self._lock:
            self.arm.update(values)

    # ------------------------------------------------------------------ views
    def franka(self) -> dict[str, Any]:
        """The franka node's status (the one reporting the safety filter's counts), or {}."""
        with self._lock:
            for name, st in self.statuses.items():
                if "clipped" in st["values"] and "rejected" in st["values"]:
                    return {"name": name, **st}
        return {}

    def control(self) -> str:
        f = self.franka()
        if f and f["values"].get("hold") is True:
            return "holding"
        return "operator" if self.intervening else "policy"

    def snapshot(self, t: float) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready values, at time ``t`` (the events' clock)."""
        f = self.franka()
        control = self.control()
        with self._lock:
            s = self.session
            op_time = s.operator_time + (t - self._intervening_since if self._intervening_since is not None else 0.0)
            if self.episode_start is None:
                elapsed = 0.0
            else:
                elapsed = (t if self.episode_active else (self.episode_end or t)) - self.episode_start
            fv = f.get("values", {})
            return {
                "control": control,
                "task": self.task,
                "instruction": self.instruction,
                "prompt": self.prompt,
                "episode": {"active": self.episode_active, "elapsed": max(0.0, elapsed),
                            "last_outcome": self.last_outcome, "interventions": self._episode_interventions},
                "session": {
                    "episodes": s.episodes, "successes": s.successes, "failures": s.failures,
                    "aborted": s.aborted, "interventions": s.interventions,
                    "interventions_per_episode": (sum(s.interventions_per_episode) / s.episodes
                                                  if s.episodes else 0.0),
                    "operator_time": op_time,
                },
                "safety": {k: fv.get(k) for k in ("clipped", "rejected", "stale_holds", "ignored", "hold",
                                                   "period_p99_ms", "rate_hz")},
                "franka": {"level": f.get("level", "STALE"), "message": f.get("message", "no status yet")},
                "arm": dict(self.arm),
                "nodes": {k: {"level": v["level"], "message": v["message"]} for k, v in self.statuses.items()},
                "last_action": self.last_action,
                "classifier": {
                    "probability": _finite(self.reward[0]) if self.reward else None,
                    "age": t - self.reward[1] if self.reward else None,
                    "threshold": _finite(self.threshold) if self.threshold is not None else None,
                },
            }
