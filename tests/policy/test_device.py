"""policy.device: one resolution of the configured device; configs accept and validate the field."""

import pytest
import torch
from omegaconf import OmegaConf

from policy.device import autocast, check_device, pin_memory, resolve_device


def test_auto_resolves_to_what_torch_sees():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device("").type == want and resolve_device(None).type == want
    assert resolve_device("cpu") == torch.device("cpu")
    assert check_device(" CUDA:1 ") == "cuda:1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's refusals")
def test_cpu_machine_refuses_cuda_and_keeps_fp32():
    with pytest.raises(ValueError, match=r"sft\.device='cuda'.*no CUDA"):
        resolve_device("cuda", "sft.device")
    assert not pin_memory("auto")
    with autocast("auto"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_bad_names_are_refused_naming_the_field():
    for bad in ("gpu", "cuda:x", "mps", 3):
        with pytest.raises(ValueError, match="device="):
            check_device(bad)


def test_configs_carry_and_validate_the_device(tmp_path):
    from flywheel.distill.generalist import SFTConfig
    from flywheel.distill.ire_vla import IReVLAConfig
    from flywheel.evaluate import EvalConfig, run_eval
    from flywheel.iterate import IterateConfig

    assert SFTConfig().device == "auto" and EvalConfig().device == "auto" and IterateConfig().device == "auto"
    assert IReVLAConfig().device == "auto"
    SFTConfig(device="cpu").validate()
    with pytest.raises(ValueError, match="sft.device"):
        SFTConfig(device="tpu").validate()
    with pytest.raises(ValueError, match="device='tpu'"):
        run_eval(OmegaConf.structured(EvalConfig(device="tpu", episodes=1, out=str(tmp_path / "r.json"))))
    # the eval entry point runs on the resolved device (cpu here)
    res = run_eval(OmegaConf.structured(EvalConfig(device="auto", episodes=1, cameras=[], max_steps=5, progress=False,
                                                   out=str(tmp_path / "r.json"))))
    assert next(iter(res.values())).episodes == 1
