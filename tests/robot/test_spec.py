import numpy as np
import pytest

from rig.geometry import quat_angle, quat_to_rotvec, rotvec_to_quat
from rig.spec import RigSpec, SpecError, SpecMismatch, check_compatible, default_spec


def test_spec_round_trips_through_json():
    spec = default_spec()
    assert RigSpec.from_json(spec.to_json()) == spec


def test_mismatch_names_both_sides_and_the_field():
    rig = default_spec(128)
    ckpt = default_spec(224)
    with pytest.raises(SpecMismatch) as e:
        check_compatible(rig, ckpt, "rig", "checkpoint /tmp/x")
    msg = str(e.value)
    assert "rig" in msg and "checkpoint /tmp/x" in msg
    assert "cameras[0].height: 128 != 224" in msg


def test_compatible_specs_pass():
    check_compatible(default_spec(), default_spec())


def test_observation_validation():
    spec = default_spec(8)
    obs = {k: np.zeros(s.shape, s.dtype) for k, s in spec.observation_specs().items()}
    spec.check_observation(obs)
    bad = dict(obs, **{"state/ee_pos": np.zeros(4, np.float32)})
    with pytest.raises(SpecError, match="state/ee_pos.*shape"):
        spec.check_observation(bad)
    bad = dict(obs, **{"images/front": np.zeros((8, 8, 3), np.float32)})
    with pytest.raises(SpecError, match="dtype"):
        spec.check_observation(bad)
    nan = dict(obs, **{"state/ee_pos": np.array([np.nan, 0, 0], np.float32)})
    with pytest.raises(SpecError, match="NaN"):
        spec.check_observation(nan)
    missing = dict(obs)
    del missing["images/wrist"]
    with pytest.raises(SpecError, match="images/wrist"):
        spec.check_observation(missing)


def test_action_target_round_trip():
    act = default_spec().action
    rng = np.random.default_rng(0)
    pos = np.array([0.5, 0.0, 0.3])
    quat = np.array([1.0, 0.0, 0.0, 0.0])
    for _ in range(100):
        a = rng.uniform(-1, 1, 7).astype(np.float32)
        tp, tq, w = act.to_target(a, pos, quat)
        assert np.linalg.norm(tp - pos) <= act.max_translation * np.sqrt(3) + 1e-9
        assert quat_angle(tq, quat) <= act.max_rotation * np.sqrt(3) + 1e-6
        assert 0.0 <= w <= 0.08
        back = act.from_target(tp, tq, w, pos, quat)
        np.testing.assert_allclose(back, a, atol=1e-5)


def test_action_rejects_nan_and_wrong_shape():
    act = default_spec().action
    with pytest.raises(SpecError, match="NaN"):
        act.check(np.array([np.nan] * 7, np.float32))
    with pytest.raises(SpecError, match="last dimension 7"):
        act.check(np.zeros(6, np.float32))


def test_rotvec_quat_inverse():
    rng = np.random.default_rng(1)
    for _ in range(50):
        r = rng.normal(size=3)
        r *= min(1.0, 3.0 / np.linalg.norm(r))
        np.testing.assert_allclose(quat_to_rotvec(rotvec_to_quat(r)), r, atol=1e-9)
