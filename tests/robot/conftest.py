"""Fixtures of the robot tests: a franka-sim server (FCI over MuJoCo) on a private loopback address."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def franka_sim(tmp_path_factory):
    """A franka-sim server for one test module, bound to a random 127.x.y.z; killed in teardown.

    Tests may ``kill()`` and ``start()`` it again (the FCI going away and coming back).
    """
    from robot.backends.franka_sim_process import (
        FrankaSimProcess,
        default_mjcf,
        default_python,
        free_loopback_host,
    )

    if not default_python().exists():
        pytest.skip(f"franka-sim is not installed ({default_python()} missing): run `make install`")
    if default_mjcf() is None:
        pytest.skip("no arm MJCF for franka-sim (set FR3_MJCF or install gym-hil)")
    log = tmp_path_factory.mktemp("franka_sim") / "franka_sim.log"
    sim = FrankaSimProcess(free_loopback_host(), log_path=log)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
