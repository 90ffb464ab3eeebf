"""The promotion gate: paired held-out seeds, significance, and no task left behind."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flywheel.evaluate import TaskResult
from flywheel.gate import GateConfig, decide, mcnemar_one_sided


def _result(task: str, outcomes: list[bool], seeds: list[int] | None = None) -> TaskResult:
    seeds = list(range(1000, 1000 + len(outcomes))) if seeds is None else seeds
    return TaskResult(task, len(outcomes), sum(outcomes), 10.0, 0.0, seeds=seeds,
                      success_per_episode=list(outcomes))


def test_mcnemar_matches_the_binomial_tail():
    # 8 wins of 10 discordant pairs: P(X >= 8), X ~ Bin(10, 1/2) = (45 + 10 + 1) / 1024
    assert mcnemar_one_sided(8, 2) == pytest.approx(56 / 1024)
    assert mcnemar_one_sided(0, 0) == 1.0
    assert mcnemar_one_sided(0, 5) == 1.0
    assert mcnemar_one_sided(5, 0) == pytest.approx(1 / 32)
    with pytest.raises(ValueError):
        mcnemar_one_sided(-1, 2)


def test_a_large_paired_gain_is_promoted_with_its_interval():
    rng = np.random.default_rng(0)
    parent = {t: _result(t, list(rng.random(100) < 0.3)) for t in ("a", "b")}
    cand = {t: _result(t, [bool(x) or (rng.random() < 0.6) for x in parent[t].success_per_episode])
            for t in ("a", "b")}
    d = decide(parent, cand)
    assert d.promote, d.reason
    assert d.pairs == 200 and d.unpaired == 0
    lo, hi = d.gain_ci95
    assert 0 < lo < d.gain < hi
    assert d.p_value < 1e-6
    assert "promoted" in d.table() and "| a |" in d.table()


def test_a_small_gain_within_noise_is_not_promoted():
    parent = {"a": _result("a", [True] * 10 + [False] * 10)}
    cand = {"a": _result("a", [True] * 11 + [False] * 9)}  # one more success: gained 1, lost 0
    d = decide(parent, cand)
    assert not d.promote
    assert d.gain == pytest.approx(0.05)
    assert "not significant" in d.reason and math.isclose(d.p_value, 0.5)


def test_a_candidate_dominated_on_one_task_is_not_promoted_whatever_it_gains_elsewhere():
    parent = {"easy": _result("easy", [True] * 50), "hard": _result("hard", [False] * 50)}
    cand = {"easy": _result("easy", [True] * 40 + [False] * 10), "hard": _result("hard", [True] * 50)}
    d = decide(parent, cand, GateConfig(max_task_drop=0.05))
    assert d.gain > 0.3 and d.p_value < 1e-6  # a big pooled gain ...
    assert not d.promote  # ... but "easy" fell 0.20
    assert "dominated on easy" in d.reason
    assert decide(parent, cand, GateConfig(max_task_drop=0.25)).promote


def test_episodes_are_paired_by_seed_not_by_position():
    seeds = list(range(20))
    parent = {"a": _result("a", [s % 2 == 0 for s in seeds], seeds)}
    # the same outcomes listed in reverse seed order: no real change
    cand = {"a": _result("a", [s % 2 == 0 for s in reversed(seeds)], list(reversed(seeds)))}
    d = decide(parent, cand)
    assert d.gain == 0 and d.tasks[0].gained == 0 and d.tasks[0].lost == 0
    # seeds only one side ran are counted and ignored
    cand2 = {"a": _result("a", [True] * 5, [100, 101, 102, 0, 2])}
    d2 = decide(parent, cand2)
    assert d2.pairs == 2 and d2.unpaired == 21


def test_no_shared_episodes_is_a_clear_refusal():
    d = decide({"a": _result("a", [True])}, {"b": _result("b", [True])})
    assert not d.promote and "no paired episodes" in d.reason


def test_results_without_per_episode_outcomes_are_refused():
    bad = TaskResult("a", 3, 2, 1.0, 0.0, seeds=[1, 2, 3], success_per_episode=[True])
    with pytest.raises(ValueError, match="cannot pair"):
        decide({"a": bad}, {"a": _result("a", [True] * 3, [1, 2, 3])})


def test_the_decision_round_trips_to_json_dicts():
    import json

    d = decide({"a": _result("a", [False] * 30)}, {"a": _result("a", [True] * 30)})
    blob = json.loads(json.dumps(d.to_dict()))
    assert blob["promote"] is True and blob["tasks"][0]["delta"] == pytest.approx(1.0)
