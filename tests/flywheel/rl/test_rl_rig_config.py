"""`flywheel-rl env.kind=rig` and `flywheel-eval env=rig`: what cannot run on the rig is refused naming the key.

(The runs themselves, against `rig-up rig=sim`, are in tests/apps/test_rig_episodes.py.)"""

from __future__ import annotations

import pytest

from flywheel.rl.app import compose
from flywheel.rl.build import make_env

RIG = ["rl_task=none", "env.kind=rig", "env.privileged_state=false", "intervention.enabled=false", "demos.num=0"]


def without(key: str) -> list[str]:
    return [o for o in RIG if not o.startswith(key)]


@pytest.mark.parametrize("overrides, match", [
    (["env.kind=lab"], r"env.kind='lab': use sim or rig"),
    (without("env.privileged_state"), r"env.privileged_state=true with env.kind=rig: the rig has no object poses"),
    (without("intervention.enabled"), r"intervention.enabled=true with env.kind=rig.*set intervention.enabled=false"),
    (without("demos.num"), r"demos.num>0 with env.kind=rig and no demos.store"),
    ([*RIG, "role=actor", "role.record_to=/tmp/x.zarr"], r"role.record_to with env.kind=rig: the rig-up recorder"),
    ([*RIG, "env.factory=rl_toy_envs:LineEnv"], r"env.kind=rig with env.factory='rl_toy_envs:LineEnv'"),
    ([*RIG, "env.reset.kind=magic"], r"env.reset.kind='magic': use one of none, scripted, operator"),
    ([*RIG, "env.reset.workspace_min=[0.7,0,0.1]"], r"env.reset.workspace_min=\[0.7, 0.0, 0.1\]: must be below"),
    ([*RIG, "env.max_episode_steps=0"], r"max_episode_steps=0: must be >= 1"),
])
def test_what_the_rig_cannot_do_is_refused_before_connecting(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_env(compose(overrides))


def test_the_actor_role_needs_no_demos_and_the_default_env_stays_sim():
    cfg = compose(["role=actor", *without("demos.num")])  # an actor loads no demos
    assert cfg.env.kind == "rig" and cfg.env.reset.kind == "none" and cfg.env.max_episode_steps == 200
    from flywheel.rig_env import check_rl_on_rig, rl_spec

    check_rl_on_rig(cfg)
    assert compose([]).env.kind == "sim"
    spec = rl_spec(compose([*RIG, "env.cameras=[wrist]", "env.image_size=32", "env.control_hz=15"]).env)
    assert [c.name for c in spec.cameras] == ["wrist"] and spec.cameras[0].height == 32
    assert spec.action.control_hz == 15.0


def test_flywheel_eval_on_the_rig_refuses_the_expert_and_a_bad_reset():
    from omegaconf import OmegaConf

    from flywheel.evaluate import EvalConfig, _env_factory
    from rig.spec import default_spec
    from robot.reset import ResetConfig

    with pytest.raises(ValueError, match="env=rig evaluates a policy checkpoint"):
        _env_factory(OmegaConf.structured(EvalConfig(env="rig")), None)
    make = _env_factory(OmegaConf.structured(EvalConfig(env="rig", reset=ResetConfig(kind="later"))),
                        default_spec(16, ("wrist",)))
    with pytest.raises(ValueError, match=r"reset.kind='later': use one of none, scripted, operator"):
        make("reach")
