"""``flywheel-rl``: HIL-SERL training as a hydra app (``role=local|learner|actor``); the app is :mod:`flywheel.rl.app`.

Examples::

    flywheel-rl rl_task=peg_insert total_steps=20000                 # actor + learner in one process
    FLYWHEEL_RL_TOKEN=... flywheel-rl role=learner transport.bind_host=0.0.0.0   # on the GPU machine
    FLYWHEEL_RL_TOKEN=... flywheel-rl role=actor transport.host=gpu-box role.actor_name=rig0  # on the rig
    flywheel-rl rl_task=lift_cube demos.num=0 intervention.enabled=false      # an ablation
    flywheel-rl rl_task=lift_cube algo=bc algo.steps=5000                      # the BC baseline

``role`` (local | learner | actor) and ``algo`` (hil_serl | bc) are config groups holding the
fields of that role or algorithm only: ``role.actor_name``, ``role.record_to``, ``role.rate_hz``,
``role.resume``, ``role.final_eval_episodes``; ``algo.reward``, ``algo.classifier``, ``algo.steps``.
A key of the form before the groups (``final_eval_episodes=``) fails naming its new key.

Outputs under ``out_dir``: ``checkpoint/`` (resumed automatically), ``tb/``
(TensorBoard), ``learning_curve.png``, ``results.json``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flywheel.rl.app import check_overrides, register, run

__all__ = ["main", "register", "run"]


def main() -> None:
    from flywheel.overrides import hydra_main

    def app(cfg: Any) -> None:
        logging.basicConfig(level=logging.INFO)
        res = run(cfg)
        printable = {k: v for k, v in res.items() if k != "config"}
        print(json.dumps(printable, indent=2, default=str))

    hydra_main("flywheel_rl", check_overrides, register, app)


if __name__ == "__main__":
    main()
