"""``flywheel-distill``'s config: the ``method`` group, the old (union) keys, and jobs saved before the group."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from flywheel.distill import cli

FIXTURES = Path(__file__).parent / "fixtures"


def _old(method: str) -> dict:
    """A job config as flywheel-distill saved it before the method group (written by that code)."""
    return json.loads((FIXTURES / f"job_config_before_method_group_{method}.json").read_text())


def test_each_method_option_holds_its_own_fields_only():
    r = cli.compose(["method=rldg", "method.tasks=[A]", "method.source=human", "method.episodes_per_task=7"])
    assert r.method.name == "rldg" and list(r.method.tasks) == ["A"] and r.method.source == "human"
    assert r.method.episodes_per_task == 7 and "expert_tasks" not in r.method and "rl_tasks" not in r.method
    i = cli.compose(["method=ire_vla", "method.expert_tasks=[E]", "method.rl_tasks=[R]", "method.head_updates=9"])
    assert i.method.name == "ire_vla" and list(i.method.expert_tasks) == ["E"] and list(i.method.rl_tasks) == ["R"]
    assert i.method.head_updates == 9 and "tasks" not in i.method and "source" not in i.method
    assert cli.compose([]).method.name == "rldg"  # the default
    assert {"workdir", "store", "parent", "seed", "generalist", "sft"} <= set(i) and "tasks" not in i


def test_a_field_of_the_other_method_fails_naming_its_method():
    with pytest.raises(ValueError, match=r"method.tasks= is not a field of method=ire_vla \(a field of method=rldg\)"):
        cli.compose(["method=ire_vla", "method.tasks=[A]"])
    with pytest.raises(ValueError, match=r"method.rl_tasks= is not a field of method=rldg \(a field of method=ire_vla\)"):
        cli.compose(["method.rl_tasks=[A]"])  # rldg by default
    with pytest.raises(ValueError, match="method.name= cannot be set: pick the option with method=NAME"):
        cli.compose(["method=rldg", "method.name=ire_vla"])
    # hydra's own typing refuses it too (the options are dataclasses), whatever composes the config
    from robot.config import compose

    cli.register()
    with pytest.raises(ConfigCompositionException, match="method.expert_tasks"):
        compose("flywheel_distill", ["method=rldg", "method.expert_tasks=[A]"])


@pytest.mark.parametrize("old,new", [("tasks=[A]", "method.tasks="), ("source=human", "method.source="),
                                     ("registry=/r", "method.registry="), ("expert_tasks=[A]", "method.expert_tasks="),
                                     ("stage0_steps=3", "method.stage0_steps="),
                                     ("rldg.episodes_per_task=2", "method.episodes_per_task="),
                                     ("ire.rl_tasks=[A]", "method.rl_tasks=")])
def test_the_old_union_keys_fail_naming_the_new_key(old, new):
    with pytest.raises(ValueError, match=f"{old.split('=')[0]}= is no longer a key of this app: write {new}"):
        cli.compose(["method=rldg", old])


def test_the_app_exits_with_the_new_key_on_an_old_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["flywheel-distill", "method=rldg", "tasks=[A]", "source=human"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert "write method.tasks= (a field of method=rldg)" in str(e.value.code)


@pytest.mark.parametrize("method", ["rldg", "ire_vla"])
def test_a_saved_config_from_before_the_group_upgrades_to_the_composed_one(method):
    over = {"rldg": ["method.tasks=[PandaRig/LiftCube-Blue-v0]", "method.source=human", "method.collection=c1",
                     "method.episodes_per_task=7", "method.registry=/tmp/reg", "method.parent_id=p0"],
            "ire_vla": ["method.expert_tasks=[PandaRig/LiftCube-Red-v0]", "method.rl_tasks=[PandaRig/PegInsert-v0]",
                        "method.stage0_steps=11", "method.head_updates=9"]}[method]
    now = cli._plain(cli.compose([f"method={method}", "parent=/tmp/ckpt", "workdir=/tmp/w", "seed=3", "sft.steps=5",
                                  *over]))
    old = _old(method)
    up = cli.upgrade_config(old)
    assert up["method"] == now["method"]
    assert {k: up[k] for k in ("workdir", "store", "parent", "seed")} == {k: now[k] for k in ("workdir", "store",
                                                                                            "parent", "seed")}
    assert set(up) == set(now) and up["sft"]["steps"] == 5
    assert cli.upgrade_config(now) == now  # the current form is left as it is


def test_a_saved_config_from_before_a_new_method_key_gets_its_default():
    now = cli._plain(cli.compose(["method=ire_vla", "parent=/tmp/ckpt", "workdir=/tmp/w", "method.head_updates=9"]))
    old = {**now, "method": {k: v for k, v in now["method"].items() if k != "stage2_rl_fraction"}}
    assert cli.upgrade_config(old) == now and now["method"]["stage2_rl_fraction"] == 0.0


def test_a_job_started_before_the_group_resumes(tmp_path):
    cfg = cli.compose(["method=rldg", "parent=/tmp/ckpt", f"workdir={tmp_path}", "seed=3", "sft.steps=5",
                       "method.tasks=[PandaRig/LiftCube-Blue-v0]", "method.source=human", "method.collection=c1",
                       "method.episodes_per_task=7", "method.registry=/tmp/reg", "method.parent_id=p0",
                       "progress=false"])
    now = cli._plain(cfg)
    # the old job's shared sections as today's defaults make them (the fixture fixes the old shape)
    old = {**_old("rldg"), "workdir": str(tmp_path), "generalist": now["generalist"], "sft": now["sft"]}
    done = {"distill": {"output": {"checkpoint": "/tmp/ckpt/done", "data": {}}},
            "register": {"output": {"registered": True, "id": "x"}}}
    (tmp_path / "job_state.json").write_text(json.dumps({"config": old, "stages": done}))
    state = cli.run(cfg)  # the finished stages are not run again (they would need a real parent and store)
    assert state["stages"]["distill"]["output"]["checkpoint"] == "/tmp/ckpt/done"
    assert json.loads((tmp_path / "job_state.json").read_text())["config"] == now
    # a different config still refuses the workdir
    with pytest.raises(ValueError, match="different config"):
        cli.run(cli.compose(["method=rldg", "parent=/tmp/ckpt", f"workdir={tmp_path}", "seed=4"]))


def test_the_ire_vla_job_reads_its_method_fields():
    from flywheel.distill.ire_vla import build_job

    cfg = cli.compose(["method=ire_vla", "method.rl_tasks=[PandaRig/PegInsert-v0,PandaRig/LiftCube-Blue-v0]"])
    names = [s.name for s in build_job(cfg, Path("/nonexistent"), Path("/nonexistent/store"), progress=False)]
    assert names == ["expert_demos", "stage0", "eval_stage0", "round1_rl", "eval_round1_rl", "round1_sl",
                     "eval_round1_sl", "round2_rl", "eval_round2_rl", "round2_sl", "eval_round2_sl", "report"]
