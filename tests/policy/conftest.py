"""Fixtures of the policy tests: tiny random backbones, built once per session (no downloads)."""

from __future__ import annotations

import pytest

FAMILIES = ("smolvlm", "paligemma")


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> dict:
    from policy.tiny import main

    root = tmp_path_factory.mktemp("backbones")
    for fam in FAMILIES:
        main(["--family", fam, "--out", str(root / fam)])  # the CLI path
    return {fam: root / fam for fam in FAMILIES}
