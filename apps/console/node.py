"""``operator-console``: the operator's web page beside the rig, as a node of the graph.

Subscribes ``teleop/intervening``, ``episode/event``, ``policy/instruction``, ``/diagnostics`` and the
reward classifier's ``reward/probability`` / ``reward/threshold`` (std_msgs/Float32, from the env adapter), and
takes the newest ``cameras/<name>/image_raw``, ``ee_pose`` and ``gripper/state`` only when a page asks
(:mod:`apps.console.taker`: the console's cost follows the pages' rates, not the publishers'); acts through the same topics and
services as the keyboard: ``episode/event`` (start, success, failure, reset, abort),
``teleop/intervening`` (take over / hand back, only while no teleop device publishes it),
``policy/instruction`` and the franka node's ``hold`` service (hold, release, and the page's
always-visible STOP). Serves the page on ``host:port`` (loopback by default; a session token
guards every request, see :class:`apps.console.web.Auth`). With ``store`` set it keeps the
review queue of that episode store's classifier positives (:mod:`apps.console.review`).

Parameters: :class:`ConsoleParams`. Runs alone (``operator-console --ros-args -p port:=8080``)
or in ``rig-up console=true``.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32, String
from std_srvs.srv import SetBool

from apps.console.curves import read_curves
from apps.console.frames import FrameCache, encode_jpeg, fit
from apps.console.review import ReviewPolicy, ReviewQueue
from apps.console.state import EVENTS, ConsoleState
from apps.console.taker import LatestTaker
from apps.console.web import ACTIONS, Auth, WebServer, is_loopback, make_app
from robot.ros.convert import gripper_width, header_time, pose_to_numpy
from robot.ros.diagnostics import OK, WARN, level_of
from robot.ros.lifecycle import RigNode, run_lifecycle_node
from robot.ros.params import declare_dataclass, read_dataclass, require
from robot.ros.qos import COMMAND_QOS, LATCHED_QOS


@dataclass
class ReviewParams:
    min_audits: int = 20  # review every classifier positive until this many are reviewed
    full_review_fp: float = 0.2  # review all while the false-positive share's upper bound is at least this
    min_rate: float = 0.05  # never review fewer than this share of positives


@dataclass
class ConsoleParams:
    host: str = "127.0.0.1"  # bind address; anything but loopback needs the token in the URL
    port: int = 8080  # 0: any free port (see url_file)
    token: str = ""  # session token; empty: a random one, printed with the URL
    url_file: str = ""  # write the console's URL (with the token) here once it serves
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    image_size: int = 128  # px, longer side of the live views (the policy's resolution)
    frame_hz: float = 10.0  # most camera frames per second sent to one page
    state_hz: float = 5.0  # state updates per second sent to one page
    jpeg_quality: int = 80
    task: str = ""  # the task the session records
    store: str = ""  # episode store whose classifier positives are reviewed ("" none)
    review_refresh: float = 2.0  # s between looks at the store for new episodes
    learner_log: str = ""  # flywheel-rl logdir whose curves the page shows ("" none)
    service_timeout: float = 2.0  # s to wait for the franka node's hold service
    review: ReviewParams = field(default_factory=ReviewParams)


class ConsoleNode(RigNode):
    def __init__(self, name: str = "console", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        declare_dataclass(self, ConsoleParams())
        self.web: WebServer | None = None
        self.review_queue: ReviewQueue | None = None
        self._review_lock = threading.Lock()
        self._review_next = 0.0
        self._curves_lock = threading.Lock()
        self._curves: tuple[float, dict[str, Any]] = (-1e9, {})
        self.url = ""

    # ---------------------------------------------------------- life cycle
    def setup(self) -> None:
        p: ConsoleParams = read_dataclass(self, ConsoleParams)
        require(0 <= p.port <= 65535, "port", p.port, "must be in [0, 65535]")
        require(p.image_size > 0, "image_size", p.image_size, "must be > 0")
        require(0 < p.frame_hz <= 60, "frame_hz", p.frame_hz, "must be in (0, 60]")
        require(0 < p.state_hz <= 30, "state_hz", p.state_hz, "must be in (0, 30]")
        require(1 <= p.jpeg_quality <= 100, "jpeg_quality", p.jpeg_quality, "must be in [1, 100]")
        require(p.service_timeout > 0, "service_timeout", p.service_timeout, "must be > 0")
        require(not p.token or len(p.token) >= 16, "token", "<hidden>", "must be at least 16 characters")
        self.p = p
        self.policy = ReviewPolicy(p.review.min_audits, p.review.full_review_fp, p.review.min_rate)
        self.token = p.token or secrets.token_urlsafe(24)
        self.state = ConsoleState(task=p.task)
        self.frames = FrameCache(p.cameras, p.image_size, p.jpeg_quality)
        self.cameras = list(p.cameras)
        pub = self.make_publisher
        self.pub_event = pub(String, "episode/event", COMMAND_QOS)
        self.pub_intervening = pub(Bool, "teleop/intervening", LATCHED_QOS)
        self.pub_instruction = pub(String, "policy/instruction", LATCHED_QOS)
        self.hold_client = self.create_client(SetBool, "hold")
        sub = self.guarded_subscription
        sub(String, "episode/event", self._on_event, COMMAND_QOS)
        sub(Bool, "teleop/intervening", lambda m: self.state.on_intervening(bool(m.data), time.time()),
            LATCHED_QOS, "teleop/intervening")
        sub(String, "policy/instruction", lambda m: self.state.on_instruction(m.data), LATCHED_QOS,
            "policy/instruction")
        sub(String, "reset/prompt", lambda m: self.state.on_prompt(m.data), LATCHED_QOS, "reset/prompt")
        sub(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        sub(Float32, "reward/probability", lambda m: self.state.on_reward(m.data, time.time()), COMMAND_QOS,
            "reward/probability")
        sub(Float32, "reward/threshold", lambda m: self.state.on_threshold(m.data), LATCHED_QOS, "reward/threshold")
        # high-rate topics: the newest message only, taken when a page asks (apps/console/taker.py)
        self.taker = LatestTaker(self.context, self.get_namespace())
        self.taker.add("ee_pose", PoseStamped, "ee_pose")
        self.taker.add("gripper", JointState, "gripper/state")
        for cam in self.cameras:
            self.taker.add(f"cam/{cam}", Image, f"cameras/{cam}/image_raw")
        self.diag = self.make_diagnostics("console")

    def start(self) -> None:
        p = self.p
        if p.store:
            self.review_queue = ReviewQueue(p.store, self.policy)
        auth = Auth(self.token, p.host)
        stopping = threading.Event()
        self.web = WebServer(make_app(self, auth, p.frame_hz, p.state_hz, stopping), p.host, p.port, stopping)
        self.web.start()
        self.url = self.web.url + ("" if is_loopback(p.host) else f"?token={self.token}")
        if p.url_file:
            Path(p.url_file).write_text(self.web.url + f"?token={self.token}\n")
        self.get_logger().info(f"operator console on {self.web.url}" +
                               ("" if is_loopback(p.host) else f"?token={self.token}"))
        self.diag.set(OK, f"serving {self.web.url}", host=p.host, port=self.web.port)
        self.guarded_timer(1.0, self._update_diagnostics)

    def stop(self) -> None:
        if self.web is not None:
            self.web.stop()
            self.web = None

    def teardown(self) -> None:
        self.destroy_client(self.hold_client)
        self.taker.close()
        self.review_queue = None

    # ------------------------------------------------------------ callbacks
    def _on_event(self, m: String) -> None:
        if m.data in EVENTS:
            self.state.on_event(m.data, time.time())

    def _on_diagnostics(self, m: DiagnosticArray) -> None:
        for s in m.status:
            self.state.on_status(s.name, level_of(s.level), s.message, {kv.key: kv.value for kv in s.values})

    def _update_diagnostics(self) -> None:
        lvl = WARN if self.frames.errors or (self.review_queue and self.review_queue.error) else OK
        msg = self.frames.last_error or (self.review_queue.error if self.review_queue else "") or "serving"
        self.diag.set(lvl, msg, jpeg_encoded=self.frames.encoded, frame_errors=self.frames.errors,
                      url=self.web.url if self.web else "")

    # ------------------------------------------------------ web backend API
    def snapshot(self) -> dict[str, Any]:
        pose, new = self.taker.take("ee_pose")
        if new:
            self.state.on_arm(ee_pos=[round(float(v), 4) for v in pose_to_numpy(pose)[0]])
        grip, new = self.taker.take("gripper")
        if new:
            self.state.on_arm(gripper_width=round(gripper_width(grip), 4))
        snap = self.state.snapshot(time.time())
        snap["cameras"] = {c: {"age": self.frames.age(c)} for c in self.cameras}
        return snap

    def frame(self, camera: str, full: bool) -> tuple[int, float, bytes] | None:
        msg, new = self.taker.take(f"cam/{camera}")
        if new:
            self.frames.put(camera, msg, header_time(msg))
        return self.frames.jpeg(camera, full)

    def act(self, name: str) -> tuple[bool, str]:
        if name not in ACTIONS:
            return False, f"unknown action {name!r}"
        self.state.last_action = name
        if name in EVENTS:
            self.pub_event.publish(String(data=name))
            return True, f"episode/event {name}"
        if name in ("take_over", "hand_back"):
            # another console (same node name) may share the flag; a teleop node owns it
            owners = {i.node_name for i in self.get_publishers_info_by_topic("teleop/intervening")} - {self.get_name()}
            if owners:
                return False, (f"{', '.join(sorted(owners))} publishes teleop/intervening: "
                               "use the teleop device's take-over button")
            self.pub_intervening.publish(Bool(data=name == "take_over"))
            return True, "operator has control" if name == "take_over" else "control back to the policy"
        return self._hold(name != "release")  # hold, stop: hold; release: follow targets again

    def _hold(self, on: bool) -> tuple[bool, str]:
        if not self.hold_client.wait_for_service(timeout_sec=min(0.5, self.p.service_timeout)):
            return False, "the franka node's hold service is not available"
        done = threading.Event()
        fut = self.hold_client.call_async(SetBool.Request(data=on))
        fut.add_done_callback(lambda _: done.set())
        if not done.wait(self.p.service_timeout):
            fut.cancel()
            return False, f"hold: no answer within {self.p.service_timeout:g} s"
        res = fut.result()
        return bool(res.success), str(res.message)

    def instruct(self, text: str) -> tuple[bool, str]:
        try:
            self.state.on_instruction(text)
        except ValueError as e:
            return False, str(e)
        self.pub_instruction.publish(String(data=text))
        return True, "instruction published"

    def review_items(self) -> dict[str, Any]:
        q = self.review_queue
        if q is None:
            return {"enabled": False}
        with self._review_lock:
            if time.monotonic() >= self._review_next:
                self._review_next = time.monotonic() + self.p.review_refresh
                q.classifier_starts = self.state.classifier_success_starts(time.time())
                q.refresh()
            items = [{"index": r.index, "task": r.task, "instruction": r.instruction, "source": r.source,
                      "steps": r.length, "committed_at": r.committed_at} for r in q.pending()[:20]]
            return {"enabled": True, "pending": items, "audit": q.audit().as_dict(), "episodes": len(q.records),
                    "error": q.error}

    def curves(self) -> dict[str, Any]:
        """The learner's curves (read at most every 10 s), or ``{"enabled": False}``."""
        if not self.p.learner_log:
            return {"enabled": False}
        with self._curves_lock:
            t, got = self._curves
            if time.monotonic() - t >= 10.0:
                try:
                    got = {"enabled": True, **read_curves(self.p.learner_log), "error": ""}
                except Exception as e:  # a run not started yet, a torn event file: say so, keep the page up
                    got = {"enabled": True, "curves": {}, "episodes": 0, "error": f"{type(e).__name__}: {e}"[:300]}
                self._curves = (time.monotonic(), got)
            return got

    def review(self, index: int, verdict: str) -> tuple[bool, str]:
        q = self.review_queue
        if q is None:
            return False, "no review queue: start the console with store=<episode store>"
        with self._review_lock:
            rec = q.review(index, verdict)
            self._review_next = 0.0
        return True, f"episode {index}: success={rec.success} ({verdict})"

    def review_frame(self, index: int, camera: str) -> bytes | None:
        q = self.review_queue
        if q is None or q.store is None:
            return None
        with self._review_lock:
            rec = next((r for r in q.records if r.index == index), None)
            key = f"images/{camera}"
            if rec is None or rec.length == 0 or key not in q.store.keys:
                return None
            img = q.store.read_image(key, rec.end - 1)
        return encode_jpeg(fit(img, self.p.image_size), self.p.jpeg_quality)


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(lambda: ConsoleNode(), args)


if __name__ == "__main__":
    raise SystemExit(main())
