"""The RL learner's curves the console shows: smoothing (pure) and reading the learner's TensorBoard log."""

from __future__ import annotations

import pytest

from apps.console.curves import read_curves, smooth


def test_smooth_is_a_moving_mean_thinned_to_max_points():
    assert smooth([], []) == []
    pts = smooth([0, 10, 20, 30], [0.0, 1.0, 1.0, 0.0], window=2)
    assert pts == [[0.0, 0.0], [10.0, 0.5], [20.0, 1.0], [30.0, 0.5]]
    long = smooth(list(range(1000)), [float(i % 2) for i in range(1000)], window=20, max_points=50)
    assert len(long) == 50 and long[0][0] == 0.0 and long[-1][0] == 999.0
    assert all(abs(v - 0.5) < 0.03 for _, v in long[5:])  # alternating 0/1 averages to 1/2
    with pytest.raises(ValueError, match="window"):
        smooth([0], [1.0], window=0)


def write_learner_log(logdir, n=30):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir / "tb"))
    for i in range(n):
        w.add_scalar("episode/success", float(i >= n // 2), i * 100)
        w.add_scalar("episode/return", float(i), i * 100)
        w.add_scalar("episode/intervention_rate", 1.0 - i / n, i * 100)
    w.close()


def test_read_curves_from_a_learner_logdir(tmp_path):
    write_learner_log(tmp_path)
    got = read_curves(tmp_path, window=1)
    assert got["episodes"] == 30 and set(got["curves"]) == {"success", "return", "intervention_rate"}
    assert got["curves"]["success"][0] == [0.0, 0.0] and got["curves"]["success"][-1] == [2900.0, 1.0]
    assert read_curves(tmp_path / "tb", window=1) == got  # the tb dir itself works too
    with pytest.raises(FileNotFoundError, match="no learner log"):
        read_curves(tmp_path / "missing")
