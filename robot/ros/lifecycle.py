"""The lifecycle base class of the rig's nodes, guarded callbacks, and the executables' ``main()``.

:class:`RigNode` is an ``rclpy`` lifecycle node whose transitions call four hooks,
so a node writes what it does, not the state machine:

* :meth:`~RigNode.setup` (configure): read and validate parameters, create publishers,
  subscriptions, services; raising fails ``configure`` with the message (a
  :class:`~robot.ros.params.ParameterError` names the parameter) and tears down what was built;
* :meth:`~RigNode.start` (activate): start threads and timers;
* :meth:`~RigNode.stop` (deactivate, and before cleanup/shutdown/destroy): stop them;
* :meth:`~RigNode.teardown` (cleanup, shutdown, error, destroy): release devices.

The base calls each at most once per cycle (``stop`` only after ``start``, ``teardown``
only after ``setup``), also from ``destroy_node()``, which runs when a signal or a lost
context left no transition to run.

Guarded entities: :meth:`~RigNode.guarded_subscription`, :meth:`~RigNode.guarded_timer`
and :meth:`~RigNode.guarded_service` wrap the callback so that an exception is caught,
counted per callback in :attr:`RigNode.callback_errors`, logged (with the traceback the
first time) and reported at once on ``/diagnostics`` by every status made with
:meth:`~RigNode.make_diagnostics`; the node goes on with the next message. A failed
service answers ``success = False`` with the error. Entities made with these helpers
(and :meth:`~RigNode.make_publisher`) are destroyed by the base: those created in
``start`` at ``stop``, the others at ``teardown``.

:func:`run_lifecycle_node` is the body of every executable's ``main()``: SIGINT and
SIGTERM both end the spin and shut the node down through its lifecycle
(``on_shutdown``: ``stop`` then ``teardown``); a second signal aborts a stuck shutdown.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from robot.ros.diagnostics import CallbackErrors, Diagnostics

__all__ = ["RigNode", "run_lifecycle_node", "spin_in_background", "SPIN_PERIOD"]

#: longest wait of the executor before it checks for a stop signal (s)
SPIN_PERIOD = 0.1
_ERROR_REPORT_PERIOD = 0.5  # s: at most this often an immediate /diagnostics report under an error flood


def _clip(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


class RigNode(LifecycleNode):
    """A lifecycle node with setup/start/stop/teardown hooks and guarded callbacks (module docstring)."""

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.callback_errors = CallbackErrors()
        self._owned: list[tuple[str, str, Any]] = []  # (scope, kind, entity)
        self._diags: list[Diagnostics] = []
        self._scope = "configured"
        self._set_up = False
        self._started = False
        self._last_error_report = -float("inf")

    # ------------------------------------------------------------------ hooks
    def setup(self) -> None:
        """configure: read parameters, create entities; raise to fail the transition."""

    def start(self) -> None:
        """activate: start threads and timers; raise to fail the transition."""

    def stop(self) -> None:
        """deactivate (and before teardown): stop threads; the node keeps its entities."""

    def teardown(self) -> None:
        """cleanup / shutdown / destroy: release devices and state built in setup."""

    # ------------------------------------------------------------ transitions
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._set_up, self._scope = True, "configured"
        try:
            self.setup()
        except Exception as e:
            self.get_logger().error(f"configure failed: {e}")
            self._do_teardown()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._started, self._scope = True, "active"
        try:
            self.start()
        except Exception as e:
            self.get_logger().error(f"activate failed: {type(e).__name__}: {e}")
            self._do_stop()
            return TransitionCallbackReturn.FAILURE
        finally:
            self._scope = "configured"
        self.get_logger().info("active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._do_stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._do_stop()
        self._do_teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._do_stop()
        self._do_teardown()
        self.get_logger().info("shut down through the lifecycle")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._do_stop()
        self._do_teardown()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        # after a lost context no transition can run: release threads and devices here too
        self._do_stop()
        self._do_teardown()
        super().destroy_node()

    @property
    def is_set_up(self) -> bool:
        return self._set_up

    @property
    def is_started(self) -> bool:
        return self._started

    def _do_stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            self.stop()
        except Exception as e:
            self.get_logger().error(f"stop failed: {type(e).__name__}: {e}")
        self._destroy_scope("active")

    def _do_teardown(self) -> None:
        if not self._set_up:
            return
        self._set_up = False
        try:
            self.teardown()
        except Exception as e:
            self.get_logger().error(f"teardown failed: {type(e).__name__}: {e}")
        self._destroy_scope("configured")
        for d in self._diags:
            try:
                d.destroy()
            except Exception:
                pass
        self._diags = []

    def _destroy_scope(self, scope: str) -> None:
        keep: list[tuple[str, str, Any]] = []
        drop: list[tuple[str, str, Any]] = []
        for item in self._owned:
            (drop if item[0] == scope else keep).append(item)
        self._owned = keep
        destroy: dict[str, Callable[[Any], Any]] = {"subscription": self.destroy_subscription, "timer": self.destroy_timer,
                   "service": self.destroy_service, "publisher": self.destroy_publisher}
        for _, kind, entity in reversed(drop):
            try:
                destroy[kind](entity)
            except Exception:  # the context is gone: nothing left to release
                pass

    def _own(self, kind: str, entity: Any) -> Any:
        self._owned.append((self._scope, kind, entity))
        return entity

    # --------------------------------------------------------------- entities
    def guarded(self, where: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` wrapped: an exception is counted as an error of ``where``, reported, and swallowed."""

        def call(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception as e:
                self.report_callback_error(where, e)
                return None

        return call

    def report_callback_error(self, where: str, exc: BaseException) -> None:
        """Count, log and report an error caught in callback ``where`` (also for a node's own threads)."""
        total = self.callback_errors.add(where, exc)
        text = _clip(f"{type(exc).__name__}: {exc}")
        if self.callback_errors.count(where) == 1:  # the first of its kind: the whole story
            tb = _clip("".join(traceback.format_exception(exc)), 4000)
            self.get_logger().error(f"callback {where!r} failed (the node goes on): {text}\n{tb}")
        else:
            self.get_logger().error(f"callback {where!r} failed ({total} callback errors so far): {text}",
                                    throttle_duration_sec=1.0)
        now = time.monotonic()
        if now - self._last_error_report >= _ERROR_REPORT_PERIOD:
            self._last_error_report = now
            for d in list(self._diags):
                d.publish_now()

    def guarded_subscription(self, msg_type: Any, topic: str, callback: Callable[[Any], Any], qos: Any,
                             name: str | None = None) -> Any:
        """A subscription whose callback errors are caught and reported (as ``name``, default the topic)."""
        sub = self.create_subscription(msg_type, topic, self.guarded(name or topic, callback), qos)
        return self._own("subscription", sub)

    def guarded_timer(self, period: float, callback: Callable[[], Any], name: str | None = None) -> Any:
        """A timer whose callback errors are caught and reported; created in ``start``, gone at ``stop``."""
        where = name or f"timer {getattr(callback, '__name__', 'callback').lstrip('_')}"
        return self._own("timer", self.create_timer(period, self.guarded(where, callback)))

    def guarded_service(self, srv_type: Any, name: str, callback: Callable[[Any, Any], Any]) -> Any:
        """A service whose callback errors are caught and reported; the caller gets success False."""

        def call(request: Any, response: Any) -> Any:
            try:
                return callback(request, response)
            except Exception as e:
                self.report_callback_error(f"service {name}", e)
                if hasattr(response, "success"):
                    response.success = False
                if hasattr(response, "message"):
                    response.message = _clip(f"{type(e).__name__}: {e}")
                return response

        return self._own("service", self.create_service(srv_type, name, call))

    def make_publisher(self, msg_type: Any, topic: str, qos: Any) -> Any:
        """A publisher the base destroys at ``teardown`` (or ``stop``, when made in ``start``)."""
        return self._own("publisher", self.create_publisher(msg_type, topic, qos))

    def make_diagnostics(self, name: str, hardware_id: str = "", period: float | None = 1.0) -> Diagnostics:
        """A /diagnostics status that carries this node's callback errors; destroyed at ``teardown``."""
        d = Diagnostics(self, name, hardware_id=hardware_id, period=period, errors=self.callback_errors)
        self._diags.append(d)
        return d


# -------------------------------------------------------------------------- spinning
def spin_in_background(executor: Any, running: Callable[[], bool], name: str | None = None,
                       period: float = 0.05) -> threading.Thread:
    """Start and return a daemon thread that spins ``executor`` while ``running()`` (e.g. a private
    context's ``ok``), beside the caller's own thread. A spin that raises because the context was shut
    down under it ends the thread quietly."""

    def spin() -> None:
        try:
            while running():
                executor.spin_once(timeout_sec=period)
        except Exception:  # the context was shut down under us
            pass

    thread = threading.Thread(target=spin, name=name, daemon=True)
    thread.start()
    return thread


# -------------------------------------------------------------------------- main
def run_lifecycle_node(
    factory: Callable[[], LifecycleNode],
    args: list[str] | None = None,
    autostart: bool | None = None,
    before_spin: Callable[[LifecycleNode], None] | None = None,
) -> int:
    """Body of a node executable's ``main()``: init, configure+activate, spin, shut down.

    ``autostart`` defaults to the node's ``autostart`` parameter when it declares one
    (else True); with it false the node waits in ``unconfigured`` for a lifecycle
    manager. ``before_spin(node)`` runs in the executor thread just before spinning
    (e.g. to raise that thread's scheduling priority). SIGINT and SIGTERM end the spin
    (within :data:`SPIN_PERIOD`) and shut the node down through its lifecycle; rclpy's own
    signal handlers are off, so the context stays valid for that transition. Returns a
    process exit code (1 when configure or activate fails).
    """
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second signal: abort whatever the shutdown waits for
            raise KeyboardInterrupt
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    node: Any = None
    executor: SingleThreadedExecutor | None = None
    code = 0
    try:
        node = factory()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if autostart is None:
            autostart = bool(node.get_parameter("autostart").value) if node.has_parameter("autostart") else True
        if autostart and not stop.is_set():
            for step in (node.trigger_configure, node.trigger_activate):
                if step() != TransitionCallbackReturn.SUCCESS:
                    node.get_logger().error(f"{step.__name__} failed; see the error above")
                    code = 1
                    break
        if code == 0 and before_spin is not None:
            before_spin(node)
        while code == 0 and not stop.is_set() and node.context.ok():
            try:
                executor.spin_once(timeout_sec=SPIN_PERIOD)
            except (KeyboardInterrupt, ExternalShutdownException):
                raise
            except Exception as e:  # a callback outside the guards: report it, keep the node alive
                if isinstance(node, RigNode):
                    node.report_callback_error("executor", e)
                else:
                    node.get_logger().error(f"callback failed: {type(e).__name__}: {e}")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            if node.context.ok():
                try:
                    node.trigger_shutdown()  # on_shutdown: stop, then teardown
                except Exception as e:
                    node.get_logger().warning(f"shutdown transition: {type(e).__name__}: {e}")
            if executor is not None:
                executor.shutdown(timeout_sec=1.0)
            node.destroy_node()
        rclpy.try_shutdown()
        for sig, old in previous.items():
            signal.signal(sig, old)
    return code
