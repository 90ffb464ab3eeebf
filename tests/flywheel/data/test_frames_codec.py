"""``frames_codec``: the round trip a policy trained on a store needs for live frames."""

from __future__ import annotations

import pytest

from flywheel.data import EpisodeStore
from flywheel.data.codecs import frames_codec
from rig.spec import default_spec


@pytest.mark.parametrize("codec, quality, expect", [("jpeg", None, "jpeg:95"), ("jpeg", 80, "jpeg:80"),
                                                     ("png", None, "")])
def test_frames_codec_names_the_stores_lossy_codec(tmp_path, codec, quality, expect):
    st = EpisodeStore(tmp_path / "s", mode="w", spec=default_spec(16), image_codec=codec, image_quality=quality)
    try:
        assert frames_codec(st) == expect
    finally:
        st.close()


def test_frames_codec_refuses_a_codec_policies_cannot_match(tmp_path):
    st = EpisodeStore(tmp_path / "s", mode="w", spec=default_spec(16), image_codec="jpegxl")
    try:
        with pytest.raises(ValueError, match="jpeg or png"):
            frames_codec(st)
    finally:
        st.close()
