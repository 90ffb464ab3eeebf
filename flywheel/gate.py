"""The promotion gate: promote a candidate generalist only when it is *significantly* better.

Both models are evaluated on the same held-out seeds, so every episode is a pair
(parent's outcome, candidate's outcome) from one initial state. The gate
(:func:`decide`) is pure: per-episode booleans in, a :class:`Decision` out.

* **Gain**: pooled over tasks, the exact one-sided McNemar test on the discordant
  pairs (``b`` = candidate succeeded where the parent failed, ``c`` = the reverse):
  ``p = P(X >= b)`` for ``X ~ Binomial(b + c, 1/2)``. The candidate must have
  ``p < alpha`` and a mean paired gain above ``min_gain``. The 95% interval of the
  mean paired difference is reported beside it.
* **No task left behind**: a candidate whose success on any task drops by more
  than ``max_task_drop`` (point estimate over that task's paired episodes) is
  dominated there and is not promoted, however large its gain elsewhere.

Episodes are paired by seed; seeds that only one side ran are ignored (and
counted), and a task the parent never ran is reported but does not gate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["GateConfig", "TaskComparison", "Decision", "decide", "mcnemar_one_sided", "paired"]


@dataclass
class GateConfig:
    alpha: float = 0.05  # one-sided significance of the pooled paired gain (exact McNemar)
    min_gain: float = 0.0  # the mean paired gain (success points, 0..1) must exceed this
    max_task_drop: float = 0.05  # any task dropping by more than this blocks promotion


@dataclass
class TaskComparison:
    task: str
    pairs: int
    parent_rate: float
    candidate_rate: float
    gained: int  # candidate succeeded, parent failed
    lost: int  # parent succeeded, candidate failed
    p_value: float  # one-sided exact McNemar for this task alone (reported, not gated)

    @property
    def delta(self) -> float:
        return self.candidate_rate - self.parent_rate


@dataclass
class Decision:
    promote: bool
    reason: str
    gain: float  # mean paired difference over all pairs, success points
    gain_ci95: tuple[float, float]
    p_value: float
    pairs: int
    unpaired: int
    tasks: list[TaskComparison] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gain_ci95"] = list(self.gain_ci95)
        for t, tc in zip(d["tasks"], self.tasks, strict=True):
            t["delta"] = tc.delta
        return d

    def table(self) -> str:
        """Markdown: one row a task, then the pooled decision."""
        rows = ["| task | pairs | parent | candidate | delta | gained | lost | p (one-sided) |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for t in self.tasks:
            rows.append(f"| {t.task} | {t.pairs} | {t.parent_rate:.2f} | {t.candidate_rate:.2f} | "
                        f"{t.delta:+.2f} | {t.gained} | {t.lost} | {t.p_value:.3g} |")
        lo, hi = self.gain_ci95
        rows.append(f"| **pooled** | {self.pairs} | | | {self.gain:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                    f"{sum(t.gained for t in self.tasks)} | {sum(t.lost for t in self.tasks)} | {self.p_value:.3g} |")
        return "\n".join(rows) + f"\n\n**{'promoted' if self.promote else 'not promoted'}**: {self.reason}\n"


def mcnemar_one_sided(gained: int, lost: int) -> float:
    """``P(X >= gained)`` for ``X ~ Binomial(gained + lost, 1/2)``: the chance of at least this many
    wins among the discordant pairs if the two models were equally good. 1.0 with no discordant pair."""
    if gained < 0 or lost < 0:
        raise ValueError(f"discordant counts must be >= 0, got gained={gained}, lost={lost}")
    n = gained + lost
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, k) for k in range(gained, n + 1)) / 2.0**n)


def paired(parent: Mapping[int, bool], candidate: Mapping[int, bool]) -> tuple[list[tuple[bool, bool]], int]:
    """Outcome pairs over the seeds both ran, and how many seeds only one side ran."""
    common = sorted(set(parent) & set(candidate))
    unpaired = len(set(parent) ^ set(candidate))
    return [(bool(parent[s]), bool(candidate[s])) for s in common], unpaired


def _by_seed(result: Any) -> dict[int, bool]:
    """``{seed: success}`` from a TaskResult, its ``to_dict()``, or a mapping already keyed by seed."""
    if isinstance(result, Mapping) and "success_per_episode" not in result:
        return {int(k): bool(v) for k, v in result.items()}
    seeds = result["seeds"] if isinstance(result, Mapping) else result.seeds
    succ = result["success_per_episode"] if isinstance(result, Mapping) else result.success_per_episode
    if len(seeds) != len(succ):
        raise ValueError(f"result has {len(seeds)} seeds but {len(succ)} per-episode outcomes: cannot pair episodes")
    return {int(s): bool(v) for s, v in zip(seeds, succ, strict=True)}


def decide(parent: Mapping[str, Any], candidate: Mapping[str, Any], cfg: GateConfig | None = None) -> Decision:
    """Compare per-task results (TaskResult, its dict, or ``{seed: success}``) paired by seed."""
    cfg = cfg or GateConfig()
    tasks: list[TaskComparison] = []
    diffs: list[int] = []
    unpaired = 0
    for task in sorted(candidate):
        if task not in parent:
            continue
        pairs, extra = paired(_by_seed(parent[task]), _by_seed(candidate[task]))
        unpaired += extra
        if not pairs:
            continue
        gained = sum(1 for p, c in pairs if c and not p)
        lost = sum(1 for p, c in pairs if p and not c)
        tasks.append(TaskComparison(
            task=task, pairs=len(pairs), parent_rate=sum(p for p, _ in pairs) / len(pairs),
            candidate_rate=sum(c for _, c in pairs) / len(pairs), gained=gained, lost=lost,
            p_value=mcnemar_one_sided(gained, lost)))
        diffs.extend(int(c) - int(p) for p, c in pairs)
    if not diffs:
        return Decision(False, "no paired episodes: parent and candidate share no task and seed",
                        0.0, (0.0, 0.0), 1.0, 0, unpaired, tasks)
    n = len(diffs)
    gain = sum(diffs) / n
    var = sum((d - gain) ** 2 for d in diffs) / max(n - 1, 1)
    half = 1.96 * math.sqrt(var / n)
    gained, lost = sum(t.gained for t in tasks), sum(t.lost for t in tasks)
    p = mcnemar_one_sided(gained, lost)
    dropped = [t for t in tasks if -t.delta > cfg.max_task_drop + 1e-12]
    if dropped:
        worst = min(dropped, key=lambda t: t.delta)
        reason = (f"dominated on {', '.join(t.task for t in dropped)}: {worst.task} fell "
                  f"{worst.parent_rate:.2f} -> {worst.candidate_rate:.2f}, more than the allowed "
                  f"{cfg.max_task_drop:.2f}")
        promote = False
    elif not gain > cfg.min_gain:
        reason = f"mean paired gain {gain:+.3f} is not above {cfg.min_gain:+.3f}"
        promote = False
    elif not p < cfg.alpha:
        reason = (f"gain {gain:+.3f} [{gain - half:+.3f}, {gain + half:+.3f}] is not significant: "
                  f"McNemar p={p:.3g} (gained {gained}, lost {lost}) >= alpha {cfg.alpha}")
        promote = False
    else:
        reason = (f"gain {gain:+.3f} [{gain - half:+.3f}, {gain + half:+.3f}] over {n} paired episodes, "
                  f"McNemar p={p:.3g} < {cfg.alpha}; no task fell more than {cfg.max_task_drop:.2f}")
        promote = True
    return Decision(promote, reason, gain, (gain - half, gain + half), p, n, unpaired, tasks)

