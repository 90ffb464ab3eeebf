"""Opening an episode store for append: the time a writer (the recorder node, a collection job) waits.

A writer's open drops whatever a crashed writer left beyond the committed end. Side by side on one store:

* ``walk``: the former sweep, a walk of the whole store for ``*.partial`` temporaries (one folder per frame and
  camera: a few hundred thousand folders on a store of ~200k frames);
* ``open``: ``EpisodeStore(path, "a")`` as it is now (one listing of each camera's chunk folder, where a dead
  writer's chunks and temporaries lie).

The first pass after another job may meet a cold page cache; ``--repeats`` runs each again (warm). The walk
stops after ``--walk-limit`` seconds (reported as not finished, with the folders it had visited).

    .venv/bin/python benchmarks/store_open.py outputs/bench/store_ire_dpo_s1 [--repeats 2] [--walk-limit 900]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from flywheel.data import EpisodeStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--walk-limit", type=float, default=900.0)
    args = ap.parse_args()
    with EpisodeStore(args.store, "r") as s:
        info = {"episodes": s.num_episodes, "steps": s.num_steps, "image_keys": len(s.image_keys)}
    rows = []
    for r in range(args.repeats):
        t = time.perf_counter()
        with EpisodeStore(args.store, "a"):
            pass
        opened = time.perf_counter() - t
        t, folders, partial, finished = time.perf_counter(), 0, 0, True
        for _, _, files in os.walk(args.store):  # what rglob("*.partial") visits
            folders += 1
            partial += sum(f.endswith(".partial") for f in files)
            if time.perf_counter() - t > args.walk_limit:
                finished = False
                break
        rows.append({"pass": r, "open_for_append_s": round(opened, 3), "walk_s": round(time.perf_counter() - t, 2),
                     "walk_finished": finished, "folders_walked": folders, "partial_files": partial})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"store": args.store, **info, "passes": rows}))


if __name__ == "__main__":
    main()
