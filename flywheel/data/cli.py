"""``flywheel-data info|check|stats|export-lerobot PATH``: look after episode stores.

* ``info PATH [--json]``: episodes per task and source, success rates, steps, size
  on disk and the compression ratio against raw arrays;
* ``check PATH [--quick]``: integrity check; names every damaged chunk (array,
  file, episodes) and keeps going; exit code 1 and a report on errors
  (``--quick`` skips decoding every image);
* ``repair PATH [--quick]``: rebuild damaged metadata from the store's journal and
  quarantine damaged episodes (the rest stays readable); then ``check`` again;
* ``stats PATH OUT [--keys ...] [--success-only] [--source ...]``: normalisation
  statistics saved as ``OUT/stats.json`` and ``OUT/stats.safetensors``;
* ``export-lerobot PATH [OUT] [--episodes 0 3 5] [--success-only] [--source rl]
  [--vcodec libsvtav1|libx264] [--overwrite]``: write a LeRobotDataset v3.0;
* ``import-lerobot DIR STORE [--spec spec.json --map mapping.yaml]``: append a LeRobotDataset v3.0;
* ``export-mcap PATH OUT [--episodes ...]``: one rosbag2 MCAP bag per episode (Foxglove, ``ros2 bag``);
* ``import-mcap BAG STORE [--spec spec.json]``: bags recorded on the rig, through the recorder's sampling rule.
"""

from __future__ import annotations

import argparse
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flywheel-data", description="Inspect, check and export episode stores.")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="summary table of a store")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    chk = sub.add_parser("check", help="integrity check (exit code 1 on errors)")
    chk.add_argument("path")
    chk.add_argument("--quick", action="store_true", help="do not decode every image")
    rep = sub.add_parser("repair", help="rebuild damaged metadata, quarantine damaged episodes")
    rep.add_argument("path")
    rep.add_argument("--quick", action="store_true", help="do not decode every image")
    st = sub.add_parser("stats", help="normalisation statistics -> OUT/stats.json + OUT/stats.safetensors")
    st.add_argument("path")
    st.add_argument("out", help="directory (e.g. the checkpoint directory)")
    st.add_argument("--keys", nargs="*", help="keys (default: every state key and the action)")
    st.add_argument("--success-only", action="store_true")
    st.add_argument("--source", choices=["human", "policy", "rl"], nargs="*")
    exp = sub.add_parser("export-lerobot", help="export to the LeRobotDataset v3.0 layout")
    exp.add_argument("path")
    exp.add_argument("out", nargs="?", help="output directory (default: PATH without .zarr + _lerobot)")
    exp.add_argument("--episodes", type=int, nargs="*", help="episode indices (default: all)")
    exp.add_argument("--success-only", action="store_true")
    exp.add_argument("--source", choices=["human", "policy", "rl"], nargs="*")
    exp.add_argument("--task", nargs="*")
    exp.add_argument("--vcodec", default="libsvtav1", choices=["libsvtav1", "libx264"])
    exp.add_argument("--robot-type", default="franka_panda")
    exp.add_argument("--overwrite", action="store_true")
    imp = sub.add_parser("import-lerobot", help="append a LeRobotDataset v3.0 to a store")
    imp.add_argument("dir", help="the LeRobot dataset directory")
    imp.add_argument("store", help="the episode store (created if missing)")
    imp.add_argument("--spec", help="the rig spec.json to read the dataset as (not needed for our exports)")
    imp.add_argument("--map", dest="mapping", help="feature mapping YAML/JSON (flywheel/data/lerobot_import.py)")
    xm = sub.add_parser("export-mcap", help="episodes as rosbag2 MCAP bags (Foxglove, ros2 bag)")
    xm.add_argument("path")
    xm.add_argument("out", help="output directory: one bag per episode")
    xm.add_argument("--episodes", type=int, nargs="*", help="episode indices (default: all)")
    xm.add_argument("--overwrite", action="store_true")
    im = sub.add_parser("import-mcap", help="record MCAP bags into a store with the recorder's sampling rule")
    im.add_argument("bag", help="a bag directory, an .mcap file or a directory of bags")
    im.add_argument("store", help="the episode store (created if missing)")
    im.add_argument("--spec", help="the rig spec.json (not needed for our exports)")
    im.add_argument("--max-age", type=float, default=0.5, help="s: older streams skip a tick (as the recorder)")
    im.add_argument("--source", default="human", choices=["human", "policy", "rl"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from flywheel.data.store import StoreError

    try:
        if args.command == "info":
            from flywheel.data.integrity import format_summary, summarize, to_json

            s = summarize(args.path)
            print(to_json(s) if args.json else format_summary(s))
            return 0
        if args.command == "check":
            from flywheel.data.integrity import check_store

            probs = check_store(args.path, decode_images=not args.quick)
            errors = [p for p in probs if p.severity == "error"]
            for p in probs:
                print(p)
            print(f"{args.path}: {len(errors)} errors, {len(probs) - len(errors)} warnings"
                  + ("" if errors else " - OK"))
            return 1 if errors else 0
        if args.command == "repair":
            from flywheel.data.damage import repair

            done = repair(args.path, decode_images=not args.quick)
            for line in done:
                print(line)
            print(f"{args.path}: " + (f"{len(done)} repairs" if done else "nothing to repair"))
            return 0
        if args.command == "stats":
            from flywheel.data.stats import compute_stats, save_stats
            from flywheel.data.store import EpisodeStore

            store = EpisodeStore(args.path, "r")
            filters = {"success": True} if args.success_only else {}
            if args.source:
                filters["source"] = args.source
            paths = save_stats(compute_stats(store, args.keys, store.select(**filters)), args.out)
            print("wrote " + ", ".join(map(str, paths)))
            return 0
        if args.command == "export-lerobot":
            from flywheel.data.lerobot import export_lerobot
            from flywheel.data.store import EpisodeStore

            store = EpisodeStore(args.path, "r")
            filters = {}
            if args.success_only:
                filters["success"] = True
            if args.source:
                filters["source"] = args.source
            if args.task:
                filters["task"] = args.task
            eps = store.select(**filters)
            if args.episodes is not None:
                eps = [e for e in eps if e in set(args.episodes)]
            dest = args.out or (args.path.rstrip("/").removesuffix(".zarr") + "_lerobot")
            out = export_lerobot(store, dest, episodes=eps, vcodec=args.vcodec,
                                 robot_type=args.robot_type, overwrite=args.overwrite)
            print(f"exported {len(eps)} episodes to {out}")
            return 0
        if args.command == "import-lerobot":
            from flywheel.data.lerobot_import import import_lerobot
            from rig.spec import RigSpec

            spec = RigSpec.from_json(open(args.spec).read()) if args.spec else None
            added = import_lerobot(args.dir, args.store, spec=spec, mapping=args.mapping)
            print(f"imported {len(added)} episodes into {args.store}")
            return 0
        if args.command == "export-mcap":
            from flywheel.data.mcap import export_mcap

            bags = export_mcap(args.path, args.out, episodes=args.episodes, overwrite=args.overwrite)
            print(f"exported {len(bags)} episodes to {args.out}")
            return 0
        if args.command == "import-mcap":
            from flywheel.data.mcap import import_mcap
            from rig.spec import RigSpec

            spec = RigSpec.from_json(open(args.spec).read()) if args.spec else None
            added = import_mcap(args.bag, args.store, spec=spec, max_age=args.max_age, source=args.source)
            print(f"imported {len(added)} episodes into {args.store}")
            return 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line, never a traceback
        what = "" if isinstance(e, (StoreError, OSError, ValueError, KeyError)) else f"{type(e).__name__}: "
        msg = " ".join((e.args[0] if isinstance(e, KeyError) and e.args else str(e)).split())
        print(f"flywheel-data {args.command}: {what}{msg}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
