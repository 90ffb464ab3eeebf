"""``calibrate-handeye``: print the board, collect on the rig, simulate, solve a recorded session.

    calibrate-handeye board --out board.pdf [--paper A4]
    calibrate-handeye simulate SESSION_DIR --mode eye_in_hand [--poses 20] [--pose-noise-mm 0.5]
    calibrate-handeye solve SESSION_DIR [--mode eye_to_hand] [--out calib.yaml]
    calibrate-handeye check NEW_SESSION_DIR --calibration calib.yaml   # exit 3 when drifted
    calibrate-handeye collect SESSION_DIR --camera wrist --mode eye_in_hand [--look-at 0.5,0,0]
    calibrate-handeye intrinsics SESSION_OR_IMAGE_DIR [--out intrinsics.yaml]

Exit status 0 on success, 2 on a session or setting that cannot work (the
message says why and what to change), 3 when ``check`` finds drift.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

from calibration.board import BoardConfig, BoardError
from calibration.intrinsics import IntrinsicsError
from calibration.poses import PoseGenerationError, PoseSetConfig
from calibration.session import MODES, Session, SessionError

log = logging.getLogger("calibrate-handeye")


def _floats(n: int):
    def parse(s: str) -> list[float]:
        v = [float(x) for x in s.replace(" ", "").split(",")]
        if len(v) != n:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got {s!r}")
        return v
    return parse


def _board_args(p: argparse.ArgumentParser) -> None:
    d = BoardConfig()
    g = p.add_argument_group("board (must match the printed board)")
    g.add_argument("--squares", type=str, default=f"{d.squares_x}x{d.squares_y}", help="columns x rows")
    g.add_argument("--square-mm", type=float, default=d.square_length * 1e3)
    g.add_argument("--marker-mm", type=float, default=d.marker_length * 1e3)
    g.add_argument("--dictionary", default=d.dictionary, help="cv2.aruco dictionary, e.g. DICT_4X4_50")
    g.add_argument("--legacy-pattern", action="store_true", help="board printed by OpenCV < 4.6")


def _board(a: argparse.Namespace) -> BoardConfig:
    try:
        sx, sy = (int(v) for v in a.squares.lower().split("x"))
    except ValueError as e:
        raise BoardError(f"--squares {a.squares!r}: expected COLSxROWS such as 8x6") from e
    return BoardConfig(sx, sy, a.square_mm / 1e3, a.marker_mm / 1e3, a.dictionary, a.legacy_pattern)


def _pose_args(p: argparse.ArgumentParser, defaults: PoseSetConfig) -> None:
    g = p.add_argument_group("generated poses")
    g.add_argument("--poses", type=int, default=defaults.n, help="number of poses")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--look-at", type=_floats(3), default=None,
                   help="eye_in_hand: board centre x,y,z in the base frame (m)")
    g.add_argument("--distance", type=_floats(2), default=None, help="eye_in_hand: min,max distance (m)")
    g.add_argument("--center", type=_floats(3), default=None, help="eye_to_hand: centre of the TCP positions")
    g.add_argument("--spread", type=_floats(3), default=None, help="eye_to_hand: +- extent x,y,z (m)")
    g.add_argument("--base-quat", type=_floats(4), default=None,
                   help="eye_to_hand: TCP orientation x,y,z,w that shows the held board to the camera")
    g.add_argument("--max-tilt-deg", type=float, default=None)
    g.add_argument("--yaw-range-deg", type=float, default=None)


def _pose_cfg(a: argparse.Namespace, base: PoseSetConfig) -> PoseSetConfig:
    cfg = PoseSetConfig(**{**base.__dict__, "n": a.poses, "seed": a.seed})
    for key in ("look_at", "distance", "center", "spread", "base_quat", "max_tilt_deg", "yaw_range_deg"):
        v = getattr(a, key)
        if v is not None:
            setattr(cfg, key, v)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="calibrate-handeye", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("board", help="write the ChArUco board as a true-scale PDF (or PNG)")
    b.add_argument("--out", required=True, help="board.pdf (true scale) or board.png")
    b.add_argument("--paper", default="A4", choices=["A4", "A3", "letter"])
    b.add_argument("--px-per-mm", type=float, default=10.0, help="PNG resolution")
    _board_args(b)

    s = sub.add_parser("simulate", help="render a MuJoCo session with known extrinsics")
    s.add_argument("out", help="session directory to write")
    s.add_argument("--mode", choices=MODES, default="eye_in_hand")
    s.add_argument("--width", type=int, default=640)
    s.add_argument("--height", type=int, default=480)
    s.add_argument("--fovy-deg", type=float, default=55.0)
    s.add_argument("--image-noise", type=float, default=0.0, help="sensor noise std, gray levels")
    s.add_argument("--pose-noise-mm", type=float, default=0.0)
    s.add_argument("--pose-noise-deg", type=float, default=0.0)
    s.add_argument("--no-board", action="store_true", help="render without the board (a failing session)")
    s.add_argument("--overwrite", action="store_true")
    _board_args(s)
    _pose_args(s, PoseSetConfig(n=20))

    v = sub.add_parser("solve", help="solve a recorded session directory")
    v.add_argument("session")
    v.add_argument("--mode", choices=MODES, default=None, help="default: the session's mode")
    v.add_argument("--methods", default="all", help="comma-separated subset of tsai,park,horaud,andreff,"
                   "daniilidis,shah,li,lm (default all; the best by hold-out error wins)")
    v.add_argument("--out", default=None, help="result YAML (default SESSION/calibration.yaml)")
    v.add_argument("--min-corners", type=int, default=12)
    v.add_argument("--max-reproj-px", type=float, default=1.0, help="reject board poses with a worse fit")
    v.add_argument("--folds", type=int, default=5, help="hold-out folds for choosing the method")

    k = sub.add_parser("check", help="has a stored calibration drifted? (solve a new session and compare)")
    k.add_argument("session", help="a new session of the same camera and mode (8-10 poses are enough)")
    k.add_argument("--calibration", required=True, help="the stored calibration YAML")
    k.add_argument("--max-mm", type=float, default=2.0, help="translation drift that fails the check")
    k.add_argument("--max-deg", type=float, default=0.2, help="rotation drift that fails the check")

    c = sub.add_parser("collect", help="on the rig: move through safe poses, record a session, solve it")
    c.add_argument("out", help="session directory to write")
    c.add_argument("--camera", required=True, help="camera name (topics cameras/<name>/...)")
    c.add_argument("--mode", choices=MODES, required=True)
    c.add_argument("--namespace", default="", help="ROS namespace of the rig")
    c.add_argument("--tolerance-mm", type=float, default=2.0, help="ee_pose convergence, position")
    c.add_argument("--tolerance-deg", type=float, default=0.5, help="ee_pose convergence, rotation")
    c.add_argument("--settle-s", type=float, default=0.5, help="time to stay converged before capturing")
    c.add_argument("--move-timeout-s", type=float, default=20.0)
    c.add_argument("--input-timeout-s", type=float, default=10.0,
                   help="wait this long for the first ee_pose, image and camera_info")
    c.add_argument("--no-home", action="store_true", help="do not call the home service first and last")
    c.add_argument("--no-solve", action="store_true")
    c.add_argument("--calibration-out", default=None, help="result YAML (default SESSION/calibration.yaml)")
    _board_args(c)
    _pose_args(c, PoseSetConfig(n=20))

    i = sub.add_parser("intrinsics", help="calibrate intrinsics from board images (a session or a folder)")
    i.add_argument("images", help="session directory or a folder of images")
    i.add_argument("--out", default=None, help="camera_info YAML (default DIR/intrinsics.yaml)")
    _board_args(i)
    return p


# ---------------------------------------------------------------- commands
def cmd_board(a: argparse.Namespace) -> int:
    import cv2

    from calibration.board import write_pdf

    board = _board(a)
    out = Path(a.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise BoardError(f"cannot write {out}: its folder {out.parent} is not a writable directory "
                         f"({e.strerror or e})") from None
    if out.suffix.lower() == ".pdf":
        lay = write_pdf(board, out, a.paper)
        print(f"wrote {out}: {board.describe()}, board {lay['board_w']:.0f} x {lay['board_h']:.0f} mm on "
              f"{a.paper}; print at 100 % and check the 100 mm bar")
    else:
        img = board.image(px_per_m=a.px_per_mm * 1e3, margin_px=round(10 * a.px_per_mm))
        if not cv2.imwrite(str(out), img):
            raise BoardError(f"cannot write {out}: use a .pdf or .png file name")
        print(f"wrote {out}: {board.describe()} at {a.px_per_mm} px/mm (print the PDF for true scale)")
    return 0


def cmd_simulate(a: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")  # headless by default; set MUJOCO_GL=osmesa/glfw to override
    from calibration.simulate import SimConfig, default_poses, simulate_session

    cfg = SimConfig(mode=a.mode, n_poses=a.poses, seed=a.seed, width=a.width, height=a.height,
                    fovy_deg=a.fovy_deg, board=_board(a), show_board=not a.no_board,
                    image_noise=a.image_noise, pose_noise_mm=a.pose_noise_mm, pose_noise_deg=a.pose_noise_deg)
    cfg.poses = _pose_cfg(a, default_poses(cfg))
    s = simulate_session(a.out, cfg, overwrite=a.overwrite, progress=True)
    print(f"wrote {a.out}: {len(s.samples)} images, {a.mode}, ground truth in session.yaml")
    return 0


def _print_result(doc: dict, result) -> None:
    print(f"{'method':11s} {'score':>6s} {'hold-out px':>11s} {'mm':>7s} {'deg':>7s}")
    for m, s in doc["methods"].items():
        mark = " <- chosen" if m == result.method else ""
        if s["error"]:
            print(f"{m:11s} failed: {s['error']}")
        else:
            print(f"{m:11s} {s['holdout_score']:6.2f} {s['holdout_reprojection_px']:11.3f} "
                  f"{s['holdout_translation_mm']:7.2f} "
                  f"{s['holdout_rotation_deg']:7.3f}{mark}")
    print(f"\n{'sample':>6s} {'corners':>7s} {'mm':>7s} {'deg':>7s} {'px':>6s} {'hold-out mm':>11s} {'deg':>7s}")
    for s in result.per_sample:
        print(f"{s['index']:6d} {s['corners']:7d} {s['translation_mm']:7.2f} {s['rotation_deg']:7.3f} "
              f"{s['reprojection_px']:6.2f} {s['holdout_translation_mm']:11.2f} {s['holdout_rotation_deg']:7.3f}")
    for r in result.rejected:
        print(f"rejected sample {r['index']}: {r['reason']}")
    for w in result.warnings:
        print(f"WARNING: {w}")
    t = np.round(doc["translation"], 5).tolist()
    q = np.round(doc["quaternion_xyzw"], 6).tolist()
    print(f"\n{doc['camera']} in {doc['parent_frame']}: translation {t} m, quaternion_xyzw {q} ({result.method})")
    if "ground_truth_error" in doc:
        e = doc["ground_truth_error"]
        print(f"error vs sim ground truth: {e['translation_mm']:.3f} mm, {e['rotation_deg']:.4f} deg")


def solve_and_write(session: Session, out: str | Path | None, mode: str | None = None,
                    methods: str = "all", min_corners: int = 12, max_reproj_px: float = 1.0,
                    folds: int = 5) -> dict:
    from calibration import extrinsics
    from calibration.handeye import METHODS, Thresholds, calibrate_session

    ms = METHODS if methods == "all" else tuple(m.strip() for m in methods.split(",") if m.strip())
    th = Thresholds(min_corners=min_corners, max_pnp_rms=max_reproj_px)
    result = calibrate_session(session, ms, th, mode=mode, folds=folds)
    doc = extrinsics.result_document(result, session)
    path = extrinsics.save(doc, out or Path(session.path or ".") / "calibration.yaml")
    _print_result(doc, result)
    print(f"wrote {path} (calibration_id {doc['calibration_id']})")
    return doc


def cmd_solve(a: argparse.Namespace) -> int:
    session = Session.load(a.session)
    solve_and_write(session, a.out, a.mode, a.methods, a.min_corners, a.max_reproj_px, a.folds)
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    from calibration import extrinsics
    from calibration.drift import check_drift

    report = check_drift(extrinsics.load(a.calibration), Session.load(a.session), a.max_mm, a.max_deg)
    for w in report.fresh.warnings:
        print(f"WARNING: {w}")
    print(report.describe())
    return 3 if report.drifted else 0


def cmd_collect(a: argparse.Namespace) -> int:
    from calibration.collect_ros import CollectConfig, CollectError, collect  # rclpy only here

    base = PoseSetConfig(mode=a.mode, n=a.poses)
    cfg = CollectConfig(camera=a.camera, mode=a.mode, namespace=a.namespace, board=_board(a),
                        poses=_pose_cfg(a, base), tolerance_mm=a.tolerance_mm,
                        tolerance_deg=a.tolerance_deg, settle_s=a.settle_s, move_timeout_s=a.move_timeout_s,
                        input_timeout_s=a.input_timeout_s, home=not a.no_home)
    try:
        session = collect(a.out, cfg)
    except CollectError as e:
        print(f"calibrate-handeye collect: error: {e}", file=sys.stderr)
        return 2
    print(f"recorded {len(session.samples)} samples in {a.out}")
    if not a.no_solve:
        solve_and_write(session, a.calibration_out)
    return 0


def cmd_intrinsics(a: argparse.Namespace) -> int:
    import cv2
    import yaml

    from calibration.intrinsics import calibrate

    src = Path(a.images)
    if (src / "session.yaml").is_file():
        session = Session.load(src)
        board = session.board
        images = (session.image(i) for i in range(len(session.samples)))
    else:
        files = sorted(p for p in src.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise IntrinsicsError(f"{src} holds no .png/.jpg images and no session.yaml")
        board = _board(a)
        images = (cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files)
    intr, rms, n = calibrate(images, board)
    out = Path(a.out or src / "intrinsics.yaml")
    out.write_text(yaml.safe_dump({**intr.to_camera_info(), "rms_px": rms, "views": n}, sort_keys=False))
    k = intr.camera_matrix
    print(f"fx {k[0, 0]:.2f} fy {k[1, 1]:.2f} cx {k[0, 2]:.2f} cy {k[1, 2]:.2f}, RMS {rms:.3f} px "
          f"from {n} views; wrote {out}")
    return 0


COMMANDS = {"board": cmd_board, "simulate": cmd_simulate, "solve": cmd_solve, "check": cmd_check,
            "collect": cmd_collect, "intrinsics": cmd_intrinsics}


def main(argv: list[str] | None = None) -> int:
    from calibration.extrinsics import ExtrinsicsError
    from calibration.handeye import CalibrationError

    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[a.cmd](a)
    except (CalibrationError, SessionError, BoardError, IntrinsicsError, PoseGenerationError,
            ExtrinsicsError) as e:
        print(f"calibrate-handeye {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a bad or unwritable path: one line, never a traceback
        print(f"calibrate-handeye {a.cmd}: error: {e.strerror or e}"
              + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - anything else is one line too; -v shows the traceback
        if a.verbose:
            logging.getLogger(__name__).exception("calibrate-handeye %s failed", a.cmd)
        print(f"calibrate-handeye {a.cmd}: error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
