"""``rig-up``: the rig's whole ROS 2 node graph, from one hydra config.

:func:`graph` turns the composed config into a list of
:class:`NodeDescription` (executable, name, namespace, parameters). Two
front-ends start that same list:

* ``rig-up`` (:func:`main`, a hydra app) builds every node in this process
  and spins them on one ``SingleThreadedExecutor`` (nodes that block on
  hardware or render own worker threads). In-process nodes can share objects:
  with ``rig=sim`` the camera node renders the franka node's ``SimRig``;
* ``launch/rig.launch.py`` turns each description into a ``launch_ros`` Node
  (separate processes; the sim camera node then mirrors ``joint_states``).

Examples::

    rig-up                                   # simulated rig, keyboard teleop in this terminal
    rig-up rig=lab rig.cameras.cameras.0.serial=123 rig.cameras.cameras.1.serial=456
    rig-up rig.teleop.device=none duration=10  # 10 s, no operator device
    rig-up policy_checkpoint=ckpt/ instruction="pick up the cube" record_path=data/episodes.zarr task=pick_cube
    rig-up policy_server=gpu-box:8000 instruction="pick up the cube"   # a remote policy (policy-serve, openpi)
    rig-up console=true record_path=data/episodes.zarr   # + the operator console on http://127.0.0.1:8080/

The policy and recorder nodes start when ``policy_checkpoint`` (or ``policy_server``) /
``record_path`` are set; they are imported by module path only then, so ``robot`` never imports
torch.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from robot.config import register

log = logging.getLogger(__name__)


@dataclass
class NodeDescription:
    """One node of the graph, as ``ros2 launch`` and ``rig-up`` both need it."""

    executable: str  # console script (pyproject [project.scripts])
    name: str
    namespace: str
    factory: str  # "module:Class" for in-process construction
    parameters: dict[str, Any] = field(default_factory=dict)  # flat ROS parameters (dotted names)
    # in-process only: constructor keyword -> "<node name>.<attribute>" of a node built earlier
    shares: dict[str, str] = field(default_factory=dict)
    respawn: bool = False


@dataclass
class RigUpConfig:
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"rig": "sim"}])
    rig: Any = MISSING  # the rig group (typed by its options; a typed field would fill MISSING serials)
    policy_checkpoint: str = ""  # start the policy node with this checkpoint
    policy_server: str = ""  # or with a remote policy: HOST:PORT of policy-serve / an openpi server
    policy_mapping: str = ""  # policy_server's key mapping: "" (policy-serve), droid, or a YAML/JSON file
    instruction: str = ""  # initial language instruction for the policy
    record_path: str = ""  # start the recorder node writing episodes to this zarr store
    task: str = ""  # task name the recorder stores with every episode
    action_origin: str = "measured"  # measured (as in sim) | commanded: the policy node and recorder get the same
    duration: float = 0.0  # s to run, 0 = until Ctrl-C
    console: bool = False  # start the operator console (apps/console), a web page beside the rig
    console_host: str = "127.0.0.1"  # its bind address; anything wider needs the token in the URL
    console_port: int = 8080  # 0: any free port (see console_url_file)
    console_token: str = ""  # the console's session token ("" = a random one, printed with the URL)
    console_url_file: str = ""  # the console writes its URL (with the token) here once it serves


def register_app() -> None:
    """Register the rig groups and the ``rig_up`` app config (explicit, never at import)."""
    from hydra.core.config_store import ConfigStore

    register()
    ConfigStore.instance().store(name="rig_up", node=RigUpConfig)


def compose_rig(overrides: list[str] | None = None) -> DictConfig:
    """The ``rig_up`` config with ``overrides`` (for launch files, tests and notebooks)."""
    from robot.config import compose

    register_app()
    return compose("rig_up", overrides)


# ---------------------------------------------------------------------- graph
class GraphConfigError(ValueError):
    """The rig config cannot make a graph; the message names the key and the fix."""


def _plain(cfg: Any) -> Any:
    """A resolved python container; a missing mandatory value fails naming its key."""
    from omegaconf.errors import MissingMandatoryValue

    if not OmegaConf.is_config(cfg):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        key = str(e.full_key).replace('[', '.').replace(']', '')
        hint = (" (the RealSense serial number: rs-enumerate-devices lists them)" if key.endswith("serial") else "")
        raise GraphConfigError(f"{key} is not set{hint}: add {key}=... to the command line") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted ROS parameter names (``safety.max_tilt``); empty lists are left out."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{name}."))
        elif isinstance(v, (list, tuple)):
            if v:
                out[name] = [float(x) if isinstance(x, int) and any(isinstance(y, float) for y in v) else x
                             for x in v]
        else:
            out[name] = v
    return out


def graph(cfg: Any) -> list[NodeDescription]:
    """The node list of a composed ``rig_up`` config, in start order."""
    rig = cfg.rig
    ns = str(rig.namespace)
    robot = _plain(rig.robot)
    cams = _plain(rig.cameras)["cameras"]
    nodes = [
        NodeDescription("franka-node", "franka", ns, "robot.nodes.franka_node:FrankaNode", flatten(robot)),
        NodeDescription(
            "camera-node", "cameras", ns, "robot.nodes.camera_node:CameraNode",
            {
                "backend": str(rig.cameras.backend),
                "names": [c["name"] for c in cams],
                "serials": [str(c["serial"]) for c in cams],
                "widths": [int(c["width"]) for c in cams],
                "heights": [int(c["height"]) for c in cams],
                "fps": [float(c["fps"]) for c in cams],
                "depth": [bool(c["depth"]) for c in cams],
            },
            shares={"rig": "franka.sim_rig", "rig_lock": "franka.sim_lock"} if rig.cameras.backend == "sim" else {},
        ),
    ]
    if rig.teleop.device != "none":
        nodes.append(NodeDescription(
            "teleop-node", "teleop", ns, "robot.nodes.teleop_node:TeleopNode",
            {**flatten(_plain(rig.teleop), "teleop."), "gripper_speed": float(rig.robot.gripper_speed),
             "gripper_force": float(rig.robot.gripper_force)},
        ))
    if cfg.get("policy_checkpoint") or cfg.get("policy_server"):
        params = {"checkpoint": str(cfg.get("policy_checkpoint", "")), "instruction": str(cfg.get("instruction", "")),
                  "control_hz": float(rig.control_hz), "gripper_speed": float(rig.robot.gripper_speed),
                  "action_origin": str(cfg.get("action_origin", "measured"))}
        if cfg.get("policy_server"):  # the remote backend (policy.remote); its API key: $POLICY_SERVE_API_KEY
            host, _, port = str(cfg.policy_server).rpartition(":")
            params.update(backend="remote", host=host or "127.0.0.1", port=int(port),
                          remote_mapping=str(cfg.get("policy_mapping", "")))
        nodes.append(NodeDescription("policy-node", "policy", ns, "policy.node:PolicyNode", params))
    if cfg.get("record_path"):
        nodes.append(NodeDescription(
            "recorder-node", "recorder", ns, "flywheel.data.recorder_node:RecorderNode",
            {
                "store": str(cfg.record_path),
                "control_hz": float(rig.control_hz),
                "cameras": [c["name"] for c in cams],
                "image_size": int(rig.cameras.policy_image_size),
                "max_translation": float(rig.max_translation),
                "max_rotation": float(rig.max_rotation),
                "chunk_horizon": int(rig.chunk_horizon),
                "action_origin": str(cfg.get("action_origin", "measured")),  # the policy node's
                "task": str(cfg.get("task", "")),
                "source": "policy" if cfg.get("policy_checkpoint") or cfg.get("policy_server") else "human",
                "policy_version": str(cfg.get("policy_checkpoint") or cfg.get("policy_server") or ""),
                "rig_id": str(rig.name),
                "calibration_id": str(rig.calibration_id),
                "camera_ids": [f"{c['name']}={c['serial'] or rig.cameras.backend}" for c in cams],
            },
        ))
    if cfg.get("console"):
        nodes.append(NodeDescription(
            "operator-console", "console", ns, "apps.console.node:ConsoleNode",
            {"host": str(cfg.console_host), "port": int(cfg.console_port), "token": str(cfg.console_token),
             "url_file": str(cfg.console_url_file), "cameras": [c["name"] for c in cams],
             "image_size": int(rig.cameras.policy_image_size), "task": str(cfg.get("task", "")),
             "store": str(cfg.get("record_path", ""))},
        ))
    for d in nodes:  # an empty list has no ROS parameter type: leave it to the node's default
        d.parameters = {k: v for k, v in d.parameters.items() if not (isinstance(v, list) and not v)}
    return nodes


def launch_node_kwargs(overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Keyword arguments of ``launch_ros.actions.Node`` for each node (what rig.launch.py starts)."""
    return [
        dict(executable=d.executable, name=d.name, namespace=d.namespace or None, parameters=[d.parameters],
             respawn=d.respawn, output="screen", emulate_tty=True)
        for d in graph(compose_rig(overrides))
    ]


# ------------------------------------------------------------------ in-process
class NodeStartError(RuntimeError):
    """A node of the graph failed to configure or activate."""


def _log_transition_errors(node: Any) -> None:
    """rclpy turns an exception in a lifecycle callback into a bare ERROR: log its traceback first."""
    callbacks = getattr(node, "_callbacks", None)
    if not isinstance(callbacks, dict):
        return
    for state_id, cb in list(callbacks.items()):
        def logged(previous_state: Any, cb: Any = cb) -> Any:
            try:
                return cb(previous_state)
            except Exception:
                node.get_logger().error(f"{getattr(cb, '__name__', 'transition')} raised:\n{traceback.format_exc()}")
                raise

        callbacks[state_id] = logged


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


class Graph:
    """The node graph in this process: build, configure and activate in order, spin, close."""

    def __init__(self, cfg: Any, context: Any = None, rclpy_signal_handlers: bool = True):
        self.descriptions = graph(cfg)
        self._context = context
        self._own_context = context is None
        # False: leave SIGINT to Python (KeyboardInterrupt out of spin), so the nodes shut down through
        # their lifecycle while the context is still up (rig-up does this)
        self._rclpy_signals = rclpy_signal_handlers
        self.nodes: dict[str, Any] = {}
        self.executor: Any = None

    def start(self) -> Graph:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.lifecycle import TransitionCallbackReturn

        if self._own_context:
            from rclpy.signals import SignalHandlerOptions

            self._context = rclpy.Context()
            rclpy.init(args=[], context=self._context,
                       signal_handler_options=None if self._rclpy_signals else SignalHandlerOptions.NO)
        self.executor = SingleThreadedExecutor(context=self._context)
        try:
            for d in self.descriptions:
                cls = _import(d.factory)
                shared = {k: self._resolve(v) for k, v in d.shares.items()}
                params = [rclpy.Parameter(k, value=v) for k, v in d.parameters.items()]
                node = cls(d.name, namespace=d.namespace, context=self._context, parameter_overrides=params,
                           **{k: v for k, v in shared.items() if v is not None})
                self.nodes[d.name] = node
                self.executor.add_node(node)
                _log_transition_errors(node)
                if hasattr(node, "trigger_configure"):
                    for step in (node.trigger_configure, node.trigger_activate):
                        ret = step()
                        if ret != TransitionCallbackReturn.SUCCESS:
                            raise NodeStartError(f"node {d.name!r} ({d.executable}): {step.__name__} failed; "
                                                 "its error is logged above")
        except BaseException:
            self.close()
            raise
        return self

    def _resolve(self, ref: str) -> Any:
        node, _, attr = ref.partition(".")
        return getattr(self.nodes.get(node), attr, None)

    def spin(self, duration: float = 0.0, stop: threading.Event | None = None) -> None:
        """Spin until Ctrl-C, ``stop`` is set, or for ``duration`` seconds when > 0."""
        from rclpy.executors import ExternalShutdownException

        end = time.monotonic() + duration if duration > 0 else None
        try:
            while (self._context.ok() and (stop is None or not stop.is_set())
                   and (end is None or time.monotonic() < end)):
                self.executor.spin_once(timeout_sec=0.1 if end is None else max(0.0, min(0.1, end - time.monotonic())))
        except ExternalShutdownException:  # Ctrl-C or the context shut down by its owner
            pass

    def close(self) -> None:
        for name, node in reversed(list(self.nodes.items())):
            t0 = time.monotonic()
            try:
                if hasattr(node, "trigger_shutdown"):
                    node.trigger_shutdown()
            except Exception:  # the context may already be shut down (Ctrl-C)
                pass
            if time.monotonic() - t0 > 2.0:  # its threads were slow to stop: say which, for the next hang
                log.warning("node %r took %.1f s to shut down", name, time.monotonic() - t0)
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=1.0)
        for node in reversed(list(self.nodes.values())):
            node.destroy_node()
        self.nodes.clear()
        if self._own_context and self._context is not None:
            self._context.try_shutdown()


def run(cfg: Any) -> int:
    """Bring the rig up and spin (the body of ``rig-up``).

    Ctrl-C and SIGTERM (what ``ros2 launch`` sends) end the spin and every node shuts down through its
    lifecycle. The first signal only sets a flag the spin loop checks (within 0.1 s): an exception raised
    inside rclpy's native code (a message being taken) would surface as a pybind11 RuntimeError instead of a
    KeyboardInterrupt and end the rig with an error. A second signal interrupts at once. ``kill -USR1 <pid>``
    prints every thread's stack to stderr, for a rig that will not stop.
    """
    import faulthandler
    import signal

    try:
        g = Graph(cfg, rclpy_signal_handlers=False)
    except GraphConfigError as e:
        log.error(str(e))
        raise SystemExit(2) from None

    stop = threading.Event()

    def _stop(*_: Any) -> None:
        if stop.is_set():  # the second Ctrl-C / SIGTERM: do not wait for the loop
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        g.start()
        log.info("rig %r up: %s", str(cfg.rig.name), ", ".join(f"{d.name} ({d.executable})" for d in g.descriptions))
        g.spin(float(cfg.duration), stop)
    except KeyboardInterrupt:
        pass
    except NodeStartError as e:  # the node's own error is logged above it
        log.error(str(e))
        raise SystemExit(1) from None
    finally:
        g.close()
    return 0


def main() -> None:
    import hydra

    register_app()
    hydra.main(version_base=None, config_name="rig_up")(run)()


if __name__ == "__main__":
    main()
