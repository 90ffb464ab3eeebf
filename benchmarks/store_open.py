"""Opening an episode store for append: the time a writer (the recorder node, a collection job) waits.

A writer's open drops whatever a crashed writer left beyond the committed end. Side by side on one store:

* ``walk``: the former sweep, a walk of the whole store for ``*.partial`` temporaries (one folder per frame and
  camera: a few hundred thousand folders on a store of ~200k frames);
* ``open``: ``EpisodeStore(path, "a")`` as it is now (one listing of each camera's chunk folder, where a dead
  writer's chunks and temporaries lie).

The first pass after another job may meet a cold page cache; ``--repeats`` runs each again (warm).

    .venv/bin/python benchmarks/store_open.py outputs/bench/store_ire_dpo_s1 [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flywheel.data import EpisodeStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with EpisodeStore(args.store, "r") as s:
        info = {"episodes": s.num_episodes, "steps": s.num_steps, "image_keys": len(s.image_keys)}
    rows = []
    for r in range(args.repeats):
        t = time.perf_counter()
        n = sum(1 for _ in Path(args.store).rglob("*.partial"))
        walk = time.perf_counter() - t
        t = time.perf_counter()
        with EpisodeStore(args.store, "a"):
            pass
        rows.append({"pass": r, "walk_s": round(walk, 2), "partial_files": n,
                     "open_for_append_s": round(time.perf_counter() - t, 3)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"store": args.store, **info, "passes": rows}))


if __name__ == "__main__":
    main()
