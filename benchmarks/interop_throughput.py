"""Export and import throughput (steps/s): LeRobot v3.0 datasets and MCAP bags.

A store of ``--episodes`` episodes of ``--steps`` steps with the default rig spec (two 128 px
cameras, no depth), smooth camera-like images; each direction runs once, timed end to end
(ffmpeg encoding/decoding, parquet, CDR, the store's JPEG):

    .venv/bin/python benchmarks/interop_throughput.py                    # 10 x 50 steps
    .venv/bin/python benchmarks/interop_throughput.py --episodes 4 --steps 25
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel.data.lerobot import export_lerobot  # noqa: E402
from flywheel.data.lerobot_import import import_lerobot  # noqa: E402
from flywheel.data.mcap import export_mcap, import_mcap  # noqa: E402
from flywheel.data.store import EpisodeStore  # noqa: E402
from rig.spec import default_spec  # noqa: E402


def episode(spec, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {k: rng.normal(size=(n, *s.shape)).astype(np.float32) for k, s in spec.state_specs().items()}
    for c in spec.cameras:
        yy, xx = np.mgrid[0:c.height, 0:c.width]
        base = (xx[None] * 2 + yy[None] + np.arange(n)[:, None, None] * 3 + seed * 7) % 220 + 20
        out[f"images/{c.name}"] = np.stack([base, base // 2 + 40, 255 - base], -1).astype(np.uint8)
    out["action"] = rng.uniform(-1, 1, (n, spec.action.dim)).astype(np.float32)
    return out


def timed(label: str, steps: int, fn) -> dict:
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    row = {"step": label, "steps": steps, "seconds": round(dt, 2), "steps_per_s": round(steps / dt, 1)}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    spec = default_spec(128)
    root = Path(tempfile.mkdtemp(prefix="interop_bench_"))
    with EpisodeStore(root / "src.zarr", "w", spec) as s:
        for e in range(args.episodes):
            s.add_episode(episode(spec, args.steps, e), task="lift", instruction="lift the cube", success=True)
    n = args.episodes * args.steps
    rows = [
        timed("export-lerobot libsvtav1", n, lambda: export_lerobot(root / "src.zarr", root / "lr_av1",
                                                                     progress=False)),
        timed("export-lerobot libx264", n, lambda: export_lerobot(root / "src.zarr", root / "lr",
                                                                   vcodec="libx264", progress=False)),
        timed("import-lerobot (av1)", n, lambda: import_lerobot(root / "lr_av1", root / "lr_av1.zarr",
                                                                progress=False)),
        timed("import-lerobot (h264)", n, lambda: import_lerobot(root / "lr", root / "lr.zarr", progress=False)),
        timed("export-mcap", n, lambda: export_mcap(root / "src.zarr", root / "bags", progress=False)),
        timed("import-mcap", n, lambda: import_mcap(root / "bags", root / "mcap.zarr", progress=False)),
    ]
    mcap_mb = sum(f.stat().st_size for f in (root / "bags").rglob("*.mcap")) / 2**20
    lr_mb = sum(f.stat().st_size for f in (root / "lr_av1").rglob("*") if f.is_file()) / 2**20
    sizes = {"mcap_MB": round(mcap_mb, 1), "lerobot_av1_MB": round(lr_mb, 2)}
    print(json.dumps(sizes))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "sizes": sizes}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
