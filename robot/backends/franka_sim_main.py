"""Run franka-sim (the FCI protocol over MuJoCo) bound to one loopback address.

A script for franka-sim's own interpreter (``.fsim-venv/bin/python``: it pins
numpy 1.26 / mujoco 3.2), started by :class:`robot.backends.franka_sim_process.FrankaSimProcess`;
never imported by the project. ``run-franka-sim-server`` binds every interface
(0.0.0.0), this binds ``--host`` only (arm on port 1337, gripper on 1338), so
parallel runs on distinct 127.x.y.z addresses never see each other.
"""

from __future__ import annotations

import argparse
import logging
import signal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1", help="loopback address to bind (arm 1337, gripper 1338)")
    ap.add_argument("--gripper-object-width", type=float, default=None,
                    help="width (m) of a virtual object between the fingers, so a grasp of it succeeds")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from franka_sim import FrankaSimServer

    server = FrankaSimServer(host=args.host, gripper_object_width=args.gripper_object_width)

    def _term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        server.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
