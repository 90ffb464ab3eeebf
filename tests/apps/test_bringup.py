"""The node graph that rig-up and launch/rig.launch.py both start."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import pytest

from apps.bringup import GraphConfigError, compose_rig, graph, launch_node_kwargs

ROOT = Path(__file__).resolve().parents[2]
LAB = ["rig=lab", "rig.cameras.cameras.0.serial=111", "rig.cameras.cameras.1.serial=222"]


def _by_name(nodes):
    return {d.name: d for d in nodes}


def test_sim_graph_shares_the_sim_rig_with_the_camera_node():
    nodes = _by_name(graph(compose_rig([])))
    assert list(nodes) == ["franka", "cameras", "teleop"]
    assert nodes["franka"].executable == "franka-node" and nodes["franka"].parameters["backend"] == "sim"
    cam = nodes["cameras"]
    assert cam.executable == "camera-node" and cam.parameters["backend"] == "sim"
    assert cam.parameters["names"] == ["front", "wrist"] and cam.parameters["widths"] == [640, 640]
    assert cam.shares == {"rig": "franka.sim_rig", "rig_lock": "franka.sim_lock"}
    assert nodes["teleop"].parameters["teleop.device"] == "keyboard"
    assert all(d.namespace == "" for d in nodes.values())


def test_lab_graph_uses_hardware_backends_and_serials():
    nodes = _by_name(graph(compose_rig([*LAB, "rig.namespace=rig1", "rig.cameras.cameras.1.depth=true"])))
    assert nodes["franka"].parameters["backend"] == "franky"
    assert nodes["franka"].parameters["safety.watchdog_timeout"] == 0.5  # nested config -> dotted names
    cam = nodes["cameras"].parameters
    assert (cam["backend"], cam["serials"], cam["depth"]) == ("realsense", ["111", "222"], [False, True])
    assert nodes["cameras"].shares == {}
    assert nodes["teleop"].parameters["teleop.device"] == "spacemouse"
    assert {d.namespace for d in nodes.values()} == {"rig1"}


def test_lab_graph_without_serials_names_the_missing_key():
    with pytest.raises(GraphConfigError, match=r"rig.cameras.cameras.0.serial is not set .*rs-enumerate-devices"):
        graph(compose_rig(["rig=lab"]))
    lab = _by_name(graph(compose_rig([*LAB, "record_path=/d.zarr"])))
    assert lab["recorder"].parameters["camera_ids"] == ["front=111", "wrist=222"]
    assert lab["recorder"].parameters["source"] == "human"


def test_optional_nodes_start_when_configured():
    nodes = _by_name(graph(compose_rig(["rig.teleop.device=none", "policy_checkpoint=/ckpt", "instruction=pick it",
                                        "record_path=/data/ep.zarr"])))
    assert list(nodes) == ["franka", "cameras", "policy", "recorder"]
    assert nodes["policy"].factory == "policy.node:PolicyNode"
    assert nodes["policy"].parameters["checkpoint"] == "/ckpt"
    assert nodes["policy"].parameters["instruction"] == "pick it"
    assert nodes["recorder"].factory == "flywheel.data.recorder_node:RecorderNode"
    rec = nodes["recorder"].parameters
    assert rec["store"] == "/data/ep.zarr" and rec["cameras"] == ["front", "wrist"] and rec["image_size"] == 128
    assert rec["source"] == "policy" and rec["policy_version"] == "/ckpt"
    assert rec["action_origin"] == nodes["policy"].parameters["action_origin"] == "measured"  # one meaning
    cmd = _by_name(graph(compose_rig(["policy_checkpoint=/c", "record_path=/d.zarr", "action_origin=commanded"])))
    assert cmd["recorder"].parameters["action_origin"] == cmd["policy"].parameters["action_origin"] == "commanded"


@pytest.mark.ros
def test_every_graph_parameter_is_declared_by_its_node():
    import rclpy

    from apps.bringup import _import

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        for overrides in (["record_path=/d.zarr"], [*LAB, "policy_checkpoint=/ckpt", "record_path=/d.zarr"]):
            for d in graph(compose_rig(overrides)):
                cls = _import(d.factory)
                node = cls(d.name, context=ctx, parameter_overrides=[
                    rclpy.Parameter(k, value=v) for k, v in d.parameters.items()])
                try:
                    undeclared = [k for k in d.parameters if not node.has_parameter(k)]
                    assert not undeclared, f"{d.executable} does not declare {undeclared}"
                    for k, v in d.parameters.items():
                        assert node.get_parameter(k).value == v
                finally:
                    node.destroy_node()
    finally:
        ctx.try_shutdown()


def test_robot_never_imports_torch():
    code = ("import sys, apps.bringup, robot.env, robot.nodes.camera_node, robot.nodes.teleop_node; "
            "apps.bringup.graph(apps.bringup.compose_rig(['policy_checkpoint=x', 'record_path=y'])); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def _load_launch_file():
    spec = importlib.util.spec_from_file_location("rig_launch", ROOT / "launch" / "rig.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_launch_file_starts_the_bringup_graph(monkeypatch):
    mod = _load_launch_file()  # importing it must not need launch / launch_ros
    assert mod.node_kwargs(" ".join(LAB)) == launch_node_kwargs(LAB)

    # launch_ros cannot be installed here: stand-ins record what the launch file builds
    made = []
    fake = {name: types.ModuleType(name) for name in
            ("launch", "launch.actions", "launch.substitutions", "launch_ros", "launch_ros.actions")}
    fake["launch"].LaunchDescription = lambda entities: list(entities)
    fake["launch.actions"].DeclareLaunchArgument = lambda name, **kw: ("arg", name, kw["default_value"])
    fake["launch.actions"].OpaqueFunction = lambda function: ("opaque", function)
    fake["launch.substitutions"].LaunchConfiguration = lambda name: types.SimpleNamespace(
        perform=lambda context: context[name])
    fake["launch_ros.actions"].Node = lambda **kw: made.append(kw) or kw
    for name, m in fake.items():
        monkeypatch.setitem(sys.modules, name, m)
    arg, opaque = mod.generate_launch_description()
    assert arg == ("arg", "overrides", "rig=sim")
    opaque[1]({"overrides": "rig=sim rig.teleop.device=none rig.namespace=left"})
    assert [m["executable"] for m in made] == ["franka-node", "camera-node"]
    assert made[1]["namespace"] == "left" and made[1]["parameters"][0]["backend"] == "sim"
    assert all(m["respawn"] is False for m in made)
