"""`flywheel-iterate` as a resumable job: SIGKILLed at a stage, the rerun finishes without redoing work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY = [
    "budget=tiny", "tasks=[PandaRig/PegInsert-v0]", "pretrain_tasks=[PandaRig/PegInsert-v0]",
    "generalist.cameras=[wrist]", "generalist.image_size=16", "generalist.hidden_dim=32", "progress=false",
    "fail_below=1.01", "sft.batch_size=4", "specialist.algo=scripted",
]


def _cmd(workdir: Path) -> list[str]:
    return [sys.executable, "-c", "from flywheel.iterate import main; main()", f"workdir={workdir}",
            f"hydra.run.dir={workdir}/hydra", *TINY]


def _state(it: Path) -> dict:
    f = it / "job_state.json"
    try:
        return json.loads(f.read_text()) if f.exists() else {}
    except json.JSONDecodeError:
        return {}


def test_iteration_killed_at_a_stage_resumes_and_finishes(tmp_path):
    wd = tmp_path / "fw"
    it = wd / "iterations" / "iter_001"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "first_run.log").open("w")
    proc = subprocess.Popen(_cmd(wd), stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.time() + 240
        while _state(it).get("running") != "evaluate_candidate":
            assert proc.poll() is None, f"the job ended early: {(tmp_path / 'first_run.log').read_text()[-3000:]}"
            assert time.time() < deadline, "the job never reached evaluate_candidate"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        log.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed = _state(it)
    assert killed["running"] == "evaluate_candidate"
    assert {"bootstrap", "evaluate_current", "collect", "specialists", "distill"} <= set(killed["stages"])
    assert "report" not in killed["stages"]

    r = subprocess.run(_cmd(wd), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    done = _state(it)
    assert "running" not in done and "report" in done["stages"]
    # finished stages were not redone: same outputs and timings as before the kill
    for s in ("bootstrap", "evaluate_current", "collect", "specialists", "collect_specialists", "distill"):
        assert done["stages"][s] == killed["stages"][s]
    report = (it / "report.md").read_text()
    assert "before (g0)" in report and "after (iter_001-rldg)" in report and (it / "report.png").exists()
    reg = json.loads((wd / "registry" / "registry.json").read_text())
    cand = reg["models"]["iter_001-rldg"]
    assert cand["parent"] == "g0" and cand["data"]["source"] == ["rl", "policy"] and cand["data"]["episodes"]
    assert "success" in cand["metrics"] and reg["current"] in ("g0", "iter_001-rldg")
    # the store holds each source once: the human demos were not recollected on resume
    from flywheel.data import EpisodeStore

    with EpisodeStore(wd / "store", "r") as store:
        human = [r for r in store.records if r.source == "human"]
        assert len(human) == 2 and len({r.extra["seed"] for r in human}) == 2
        # the scripted stand-in specialist is no RL: its rollouts are tagged policy, never rl
        assert {r.source for r in store.records} == {"human", "policy"}
        spec_eps = [r for r in store.records if r.extra["collection"].startswith("iter_001/specialist/")]
        assert spec_eps and all(r.policy_version.startswith("specialist/scripted/") for r in spec_eps)
    # a rerun of a finished iteration starts the next one
    assert "iter_001" in r.stdout
