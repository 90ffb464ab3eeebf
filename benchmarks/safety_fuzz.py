"""Benchmark: fuzz the safety filter with random inputs and count limit violations (the goal is 0).

Random sessions (``tests/rig/safety_oracle.py``: the same oracle the hypothesis suite
uses) drive :class:`rig.safety.SafetyFilter` with valid, hostile and alternating
targets (any magnitude up to float64's range and beyond, Python ints like
``10**400``, every shape and dtype, NaN/Inf, degenerate and huge quaternions),
twists, stamps (fresh, stale, future, non-finite), clocks going backwards and
jumping forwards, holds, resets and gripper commands, under the default
``SafetyConfig`` and under random valid ones. After every call the oracle checks,
with its own numpy arithmetic: a rejection (``CommandRejected``) changed nothing
and was counted; any other exception is a violation; every applied command is a
finite pose with a unit quaternion inside the workspace box and tilt cone, within
the per-tick step and velocity limits and the acceleration limits, and holds when
no fresh target is in force.

    .venv/bin/python benchmarks/safety_fuzz.py                   # 120k inputs
    .venv/bin/python benchmarks/safety_fuzz.py --inputs 1000000 --seed 1
    .venv/bin/python benchmarks/safety_fuzz.py --write docs/bench/safety.md
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "rig"))

from safety_oracle import Oracle, random_session  # noqa: E402

from rig.safety import SafetyConfig  # noqa: E402

KINDS = ("set_target", "apply_twist", "step", "set_hold", "reset", "gripper")


def random_config(rng: np.random.Generator) -> SafetyConfig:
    wd = float(rng.uniform(0.02, 2.0))
    return dataclasses.replace(
        SafetyConfig(),
        watchdog_timeout=wd,
        max_clock_skew=float(rng.uniform(0.0, 1.0)) * wd,
        max_linear_velocity=float(10 ** rng.uniform(-2, 1)),
        max_angular_velocity=float(10 ** rng.uniform(-1, 1.5)),
        max_linear_acceleration=float(10 ** rng.uniform(-1, 4)),
        max_angular_acceleration=float(10 ** rng.uniform(-1, 4)),
        max_step_translation=float(rng.uniform(1e-4, 0.05)),
        max_step_rotation=float(rng.uniform(1e-3, 0.5)),
        max_tilt=float(rng.uniform(0.05, math.pi / 2)),
    )


def run(inputs: int, seed: int, session_len: int) -> tuple[dict[str, list[int]], dict[str, int], list[str], float]:
    rng = np.random.default_rng(seed)
    totals: dict[str, list[int]] = {k: [0, 0, 0] for k in KINDS}
    extra = {"sessions": 0, "ticks": 0, "moving_ticks": 0, "random_configs": 0}
    examples: list[str] = []
    done = 0
    t0 = time.perf_counter()
    while done < inputs:
        default = extra["sessions"] % 2 == 0
        cfg = SafetyConfig() if default else random_config(rng)
        extra["random_configs"] += not default
        o = Oracle(cfg, 1.0 / float(rng.choice([100.0, 500.0, 1000.0])))
        random_session(o, rng, session_len)
        for k, (n, r, v) in o.by_kind.items():
            t = totals.setdefault(k, [0, 0, 0])
            t[0] += n
            t[1] += r
            t[2] += v
        examples += o.violations[: max(0, 10 - len(examples))]
        extra["sessions"] += 1
        extra["ticks"] += o.ticks
        extra["moving_ticks"] += o.moving_ticks
        done += o.calls
    return totals, extra, examples, time.perf_counter() - t0


def table(totals: dict[str, list[int]], extra: dict[str, int], examples: list[str], seconds: float) -> str:
    lines = ["| call | inputs tried | rejected (CommandRejected) | violations |", "|---|---:|---:|---:|"]
    for k, (n, r, v) in totals.items():
        lines.append(f"| `{k}` | {n:,} | {r:,} | {v} |")
    n, r, v = (sum(t[i] for t in totals.values()) for i in range(3))
    lines.append(f"| **all** | **{n:,}** | **{r:,}** | **{v}** |")
    lines.append("")
    lines.append(f"{extra['sessions']:,} sessions ({extra['random_configs']:,} under random valid configs), "
                 f"{extra['ticks']:,} filter ticks of which {extra['moving_ticks']:,} moving; {seconds:.0f} s "
                 f"on {platform.machine()} (Python {platform.python_version()}).")
    if examples:
        lines += ["", "Violations (first 10):", ""] + [f"- `{e[:300]}`" for e in examples]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", type=int, default=120_000, help="filter calls to make in all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--session-len", type=int, default=500, help="calls per session (then a fresh filter)")
    ap.add_argument("--write", type=Path, help="write the result (markdown) to this file")
    args = ap.parse_args()
    totals, extra, examples, seconds = run(args.inputs, args.seed, args.session_len)
    out = table(totals, extra, examples, seconds)
    print(out)
    if args.write:
        cmd = " ".join(["benchmarks/safety_fuzz.py", *sys.argv[1:]])
        args.write.write_text(
            "# Safety filter fuzz (issue #14)\n\n"
            "Every call either raises `CommandRejected` (naming the field; nothing changes) or applies a command "
            "inside every limit: workspace box, tilt cone, per-tick step, velocity, acceleration, watchdog. "
            "Checked by the oracle in `tests/rig/safety_oracle.py` (the hypothesis suite "
            "`tests/rig/test_safety_fuzz.py` uses it too). The goal is 0 violations.\n\n"
            f"Command: `.venv/bin/python {cmd}`\n\n{out}\n")
    return 1 if sum(t[2] for t in totals.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
