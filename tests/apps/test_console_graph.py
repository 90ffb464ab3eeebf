"""rig-up's graph with console=true: the operator console joins as the last node."""

from __future__ import annotations

from apps.bringup import compose_rig, graph


def test_console_joins_the_graph_with_the_rig_cameras_and_the_record_store():
    nodes = {d.name: d for d in graph(compose_rig(["console=true", "record_path=/d/ep.zarr", "task=reach",
                                                    "rig.cameras.policy_image_size=96", "rig.namespace=rig1"]))}
    c = nodes["console"]
    assert list(nodes)[-1] == "console"
    assert (c.executable, c.factory, c.namespace) == ("operator-console", "apps.console.node:ConsoleNode", "rig1")
    p = c.parameters
    assert (p["host"], p["port"], p["token"]) == ("127.0.0.1", 8080, "")  # loopback by default
    assert p["cameras"] == ["front", "wrist"] and p["image_size"] == 96
    assert (p["store"], p["task"]) == ("/d/ep.zarr", "reach")


def test_no_console_unless_asked():
    assert "console" not in {d.name for d in graph(compose_rig([]))}
    wide = {d.name: d for d in graph(compose_rig(["console=true", "console_host=0.0.0.0",
                                                   "console_token=" + "k" * 20]))}["console"].parameters
    assert (wide["host"], wide["token"], wide["store"]) == ("0.0.0.0", "k" * 20, "")
