"""Parameter declaration from dataclasses (robot/ros/params.py)."""

from dataclasses import dataclass, field

import pytest

pytestmark = pytest.mark.ros


@dataclass
class _Params:
    rate: float = 10.0
    names: list[str] = field(default_factory=list)
    gains: list[float] = field(default_factory=lambda: [1.0, 2.0])


def test_empty_list_default_reads_back_empty_and_overrides_work():
    import rclpy
    from rclpy.parameter import Parameter

    from robot.ros.params import ParameterError, declare_dataclass, read_dataclass

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("params_probe", context=ctx)
        declare_dataclass(node, _Params())
        assert read_dataclass(node, _Params) == _Params()
        node.set_parameters([Parameter("names", Parameter.Type.STRING_ARRAY, ["a=1"]),
                             Parameter("rate", Parameter.Type.INTEGER, 500)])
        p = read_dataclass(node, _Params)
        assert p.names == ["a=1"] and p.rate == 500.0 and isinstance(p.rate, float)
        node.set_parameters([Parameter("rate", Parameter.Type.STRING, "fast")])
        with pytest.raises(ParameterError, match="'rate'.*a number"):
            read_dataclass(node, _Params)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
