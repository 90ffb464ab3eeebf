"""robot.ros.lifecycle.RigNode: hooks once per cycle, guarded callbacks that count, report and go on."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.ros

from _ros_probe import Probe, Spinner  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from waiting import wait_for  # noqa: E402

from robot.ros.diagnostics import OK, WARN, level_of  # noqa: E402
from robot.ros.lifecycle import RigNode  # noqa: E402
from robot.ros.params import ParameterError  # noqa: E402


class Echo(RigNode):
    """Upper-cases ``in`` to ``out``; 'bad' raises; its service always raises; its timer raises once."""

    def __init__(self, fail_setup: bool = False, **kwargs):
        super().__init__("echo", **kwargs)
        self.fail_setup = fail_setup
        self.calls: list[str] = []
        self.ticks = 0

    def setup(self) -> None:
        self.calls.append("setup")
        self.diag = self.make_diagnostics("echo", period=0.2)
        self.pub = self.make_publisher(String, "out", 10)
        self.guarded_subscription(String, "in", self._on_in, 10)
        self.guarded_service(Trigger, "boom", self._boom)
        if self.fail_setup:
            raise ParameterError("parameter 'x' = 1: must be 2")
        self.diag.set(OK, "echoing")

    def start(self) -> None:
        self.calls.append("start")
        self.guarded_timer(0.02, self._tick)

    def stop(self) -> None:
        self.calls.append("stop")

    def teardown(self) -> None:
        self.calls.append("teardown")

    def _on_in(self, m: String) -> None:
        if m.data == "bad":
            raise ValueError("a bad message")
        self.pub.publish(String(data=m.data.upper()))

    def _boom(self, req, res):
        raise RuntimeError("kaput")

    def _tick(self) -> None:
        self.ticks += 1
        if self.ticks == 1:
            raise RuntimeError("first tick")


def _counts(node) -> tuple[int, int, int, int]:
    return (len(list(node.subscriptions)), len(list(node.timers)), len(list(node.services)),
            len(list(node.publishers)))


def test_a_raising_callback_is_counted_reported_and_the_node_goes_on():
    ns = f"/g{uuid.uuid4().hex[:8]}"
    probe = Probe(namespace=ns)
    probe.subscribe("out", String)
    probe.subscribe("/diagnostics", DiagnosticArray)
    pub = probe.publisher("in", String)
    spinner = Spinner()
    try:
        node = spinner.add(Echo(namespace=ns, context=spinner.context))
        spinner.start()
        assert wait_for(lambda: pub.get_subscription_count() > 0, 10)
        assert wait_for(lambda: node.callback_errors.count("timer tick") == 1, 10)  # its first tick raised
        pub.publish(String(data="bad"))
        assert wait_for(lambda: node.callback_errors.count("in") == 1, 10)
        pub.publish(String(data="good"))
        assert wait_for(lambda: [m.data for m in probe.got("out")] == ["GOOD"], 10), "the node stopped working"

        def status():
            for a in reversed(probe.got("/diagnostics")):
                for s in a.status:
                    v = {kv.key: kv.value for kv in s.values}
                    if (s.name.startswith(f"{ns}/echo") and v.get("callback_errors.in") == "1"
                            and int(v["callback_errors"]) >= 2):  # the message and the timer's first tick
                        return s, v
            return None

        s, v = wait_for(status, 10)
        assert "a bad message" in v["last_callback_error"]
        assert level_of(s.level) == level_of(WARN) and "callback error" in s.message  # recent: raised to WARN
        assert wait_for(lambda: node.ticks > 5, 10), "the timer died with its first error"
        cli = probe.node.create_client(Trigger, "boom")
        assert cli.wait_for_service(timeout_sec=10)
        res = wait_for(lambda f=cli.call_async(Trigger.Request()): f.done() and f.result(), 10)
        assert res and not res.success and "RuntimeError: kaput" in res.message
        assert node.callback_errors.count("service boom") == 1
    finally:
        spinner.close()
        probe.close()


def test_hooks_run_once_per_cycle_and_the_base_destroys_their_entities():
    spinner = Spinner()
    try:
        node = spinner.add(Echo(namespace=f"/h{uuid.uuid4().hex[:8]}", context=spinner.context), activate=False)
        bare = _counts(node)
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        configured = _counts(node)
        assert configured[0] == bare[0] + 1 and configured[2] == bare[2] + 1
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert _counts(node)[1] == configured[1] + 1  # the timer made in start()
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert _counts(node) == configured  # ... is gone at stop()
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert _counts(node) == bare  # subscription, service, publishers and diagnostics gone at teardown
        assert node.calls == ["setup", "start", "stop", "teardown"]
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS  # a second cycle works
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
        node.destroy_node()  # after shutdown: nothing runs twice
        spinner.nodes.remove(node)
        assert node.calls == ["setup", "start", "stop", "teardown"] * 2
    finally:
        spinner.close()


def test_failed_setup_fails_configure_and_tears_down_what_it_built():
    spinner = Spinner()
    try:
        node = spinner.add(Echo(fail_setup=True, namespace=f"/f{uuid.uuid4().hex[:8]}", context=spinner.context),
                           activate=False)
        bare = _counts(node)
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.calls == ["setup", "teardown"]
        assert _counts(node) == bare
    finally:
        spinner.close()
