import pytest
from hydra.core.config_store import ConfigStore
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from rig.spec import check_compatible, default_spec
from robot.config import RigConfig, compose, register, rig_spec_from_config


@pytest.fixture(autouse=True)
def _register():
    register()
    ConfigStore.instance().store(name="_test_app", node={"defaults": ["_self_", {"rig": "sim"}]})


def test_rig_groups_compose():
    cfg = compose("_test_app")
    assert cfg.rig.robot.backend == "sim"
    lab = compose("_test_app", ["rig=lab", "rig.cameras.cameras.0.serial=123", "rig.cameras.cameras.1.serial=456"])
    assert lab.rig.robot.backend == "franky" and lab.rig.cameras.backend == "realsense"


def test_unknown_config_lists_valid_names():
    with pytest.raises(MissingConfigException) as e:
        compose("_test_app", ["rig=nope"])
    assert "sim" in str(e.value) and "lab" in str(e.value)


def test_lab_rig_requires_serials():
    lab = compose("_test_app", ["rig=lab"])
    with pytest.raises(Exception, match="serial"):
        OmegaConf.to_container(lab, throw_on_missing=True)


def test_rig_config_implies_the_default_spec():
    spec = rig_spec_from_config(OmegaConf.structured(RigConfig()))
    check_compatible(spec, default_spec(), "sim rig config", "default spec")
