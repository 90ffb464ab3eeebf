"""Reset routines between rig episodes (robot/reset.py): the scripted put-down and the operator's prompt."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from robot.reset import (
    OperatorReset,
    ResetAborted,
    ResetConfig,
    ResetTimeout,
    ScriptedReset,
    check_reset_config,
    make_reset,
)


class FakeEnv:
    """The env API a routine uses (RosRigEnv's pose, move_to, home, prompt and events), recorded."""

    def __init__(self, width: float = 0.0, answer: str | None = "reset", seed: int = 0):
        self.width, self.answer = width, answer
        self.np_random = np.random.default_rng(seed)
        self.calls: list[tuple] = []
        self.prompts: list[str] = []

    def pose(self):
        return np.array([0.31, 0.0, 0.49]), np.array([1.0, 0.0, 0.0, 0.0]), self.width

    def move_to(self, pos, quat, width=None, *, tolerance, timeout):
        self.calls.append(("move_to", np.asarray(pos).copy(), width))

    def home(self):
        self.calls.append(("home",))

    def prompt(self, text):
        self.prompts.append(text)

    def clear_events(self):
        self.calls.append(("clear",))

    def wait_event(self, names, timeout):
        self.calls.append(("wait", tuple(names), timeout))
        return self.answer


BOX = ResetConfig(kind="scripted", workspace_min=[0.4, -0.1, 0.05], workspace_max=[0.55, 0.12, 0.2])


@pytest.mark.parametrize("seed", range(20))
def test_scripted_targets_stay_inside_the_workspace_box_and_put_down_lower_open_lift(seed):
    env = FakeEnv(width=0.03, seed=seed)  # holds something 3 cm wide
    routine = ScriptedReset(BOX)
    routine(env)
    moves = [c for c in env.calls if c[0] == "move_to"]
    assert len(moves) == 4 and env.calls[-1] == ("home",) and routine.runs == 1
    for _, pos, _ in moves:
        assert np.all(pos >= np.array(BOX.workspace_min) - 1e-12) and np.all(pos <= np.array(BOX.workspace_max) + 1e-12)
    (_, above, w0), (_, down, w1), (_, down2, w2), (_, up, w3) = moves
    assert above[2] == BOX.workspace_max[2] and down[2] == BOX.workspace_min[2]  # carry high, lower to the floor
    np.testing.assert_array_equal(above[:2], down[:2])
    np.testing.assert_array_equal(down, down2)
    np.testing.assert_array_equal(up, above)
    assert (w0, w1) == (None, None) and w2 == w3 == pytest.approx(0.08)  # no gripper command until it opens


def test_scripted_spots_come_from_the_env_seed_and_an_open_gripper_holds_nothing():
    a, b, c = FakeEnv(seed=1), FakeEnv(seed=1), FakeEnv(seed=2)
    for env in (a, b, c):
        ScriptedReset(BOX)(env)
    spot = [e.calls[0][1] for e in (a, b, c)]
    np.testing.assert_array_equal(spot[0], spot[1])
    assert not np.allclose(spot[0], spot[2])
    empty = FakeEnv(width=0.08)
    routine = ScriptedReset(BOX)
    routine(empty)
    assert empty.calls == [] and routine.runs == 0


def test_operator_reset_prompts_waits_for_the_confirmation_and_withdraws_the_prompt():
    env = FakeEnv(answer="reset")
    routine = OperatorReset(ResetConfig(kind="operator", prompt="put the cube back", operator_timeout=7.0))
    routine(env)
    assert env.prompts == ["put the cube back", ""] and routine.prompts == 1
    assert env.calls == [("clear",), ("wait", ("reset", "abort"), 7.0)]


def test_operator_reset_timeout_and_abort_are_clear_errors():
    env = FakeEnv(answer=None)
    with pytest.raises(ResetTimeout, match=r"did not confirm the reset within operator_timeout=2.5 s.*'reset'"):
        OperatorReset(ResetConfig(kind="operator", operator_timeout=2.5))(env)
    assert env.prompts[-1] == ""  # withdrawn all the same
    with pytest.raises(ResetAborted, match="abort"):
        OperatorReset(ResetConfig(kind="operator"))(FakeEnv(answer="abort"))


@pytest.mark.parametrize("change, match", [
    (dict(kind="magic"), r"reset.kind='magic': use one of none, scripted, operator"),
    (dict(workspace_min=[0.4, 0.0]), r"reset.workspace_min=\[0.4, 0.0\]: must be 3 finite numbers"),
    (dict(workspace_max=[0.5, float("nan"), 0.2]), r"reset.workspace_max=.*must be 3 finite numbers"),
    (dict(workspace_min=[0.6, -0.1, 0.05]), r"reset.workspace_min=.*must be below workspace_max"),
    (dict(hold_below=0.0), r"reset.hold_below=0.0: must be in \(0, 0.08\]"),
    (dict(move_timeout=-1.0), r"reset.move_timeout=-1.0: must be > 0"),
    (dict(operator_timeout=0.0), r"reset.operator_timeout=0.0: must be > 0"),
    (dict(kind="operator", prompt=" "), r"reset.prompt=' ': must say what the operator should do"),
])
def test_bad_config_values_are_refused_naming_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        check_reset_config(replace(BOX, **change))


def test_make_reset_builds_the_kind_and_names_the_field_with_the_callers_prefix():
    assert make_reset(ResetConfig()) is None  # none: homing only
    assert isinstance(make_reset(ResetConfig(kind="scripted")), ScriptedReset)
    assert isinstance(make_reset(ResetConfig(kind="operator")), OperatorReset)
    with pytest.raises(ValueError, match=r"env.reset.kind='x'"):
        make_reset(ResetConfig(kind="x"), prefix="env.reset")
