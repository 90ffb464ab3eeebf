"""MJCF files on disk for tools that want a path (franka-sim's ``FR3_MJCF``, viewers).

``panda_mjcf_path()`` writes the Panda arm (Menagerie kinematics and inertia,
joints ``joint1..7``, bodies ``link0..link7``, no hand, primitive or gym-hil mesh
visuals) and ``hand_mjcf_path()`` the Franka Hand (body ``hand``, joints
``finger_joint1/2``), each once, into a cache directory, and return the paths.
``rig_mjcf_path()`` writes the whole rig scene (arm + hand + table + cameras).

Set ``FR3_MJCF=$(python -c 'import sim.assets as a; print(a.panda_mjcf_path())')``
(and ``FRANKA_HAND_MJCF`` from ``hand_mjcf_path()``) to run franka-sim offline.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sim.model import _arm_xml, _defaults, _hand_xml, _materials, build_mjcf, gym_hil_mesh_dir


def cache_dir() -> Path:
    """``$PANDA_FLYWHEEL_CACHE`` or ``~/.cache/panda_flywheel``, the ``mjcf`` subfolder."""
    root = Path(os.environ.get("PANDA_FLYWHEEL_CACHE", Path.home() / ".cache" / "panda_flywheel"))
    d = root / "mjcf"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _write(name: str, text: str) -> Path:
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    path = cache_dir() / f"{name}-{digest}.xml"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic: parallel writers never see a half file
    return path


def panda_mjcf_path(visual: str = "mesh") -> Path:
    """The Panda arm alone (no hand): what franka-sim's ``FR3_MJCF`` expects."""
    meshdir = f' meshdir="{gym_hil_mesh_dir()}"' if visual == "mesh" else ""
    text = f"""<mujoco model="panda_arm">
<compiler angle="radian" autolimits="true"{meshdir}/>
{_defaults()}
<asset>{_materials(visual)}</asset>
<worldbody>
<light pos="0 0 3" dir="0 0 -1" directional="true"/>
{_arm_xml(visual, with_hand=False)}
</worldbody>
<contact><exclude body1="link0" body2="link1"/></contact>
</mujoco>"""
    return _write(f"panda_arm_{visual}", text)


def hand_mjcf_path() -> Path:
    """The Franka Hand alone (first body ``hand``), for franka-sim's ``FRANKA_HAND_MJCF``.

    Its default classes are prefixed ``fh_`` and it uses no named materials, so
    it can be grafted onto an arm model with MjSpec.attach without name clashes.
    """
    hand = _hand_xml(camera=False).replace('pos="0 0 0.107" quat="0.9238795 0 0 -0.3826834"', "")
    defaults = _defaults()
    for cls in ("vis", "handcol", "pad", "finger", "panda", "obj"):
        hand = hand.replace(f'class="{cls}"', f'class="fh_{cls}"')
        defaults = defaults.replace(f'class="{cls}"', f'class="fh_{cls}"')
    for mat, rgba in (("off_white", "0.9 0.92 0.93 1"), ("dark_grey", "0.25 0.25 0.25 1")):
        hand = hand.replace(f'material="{mat}"', f'rgba="{rgba}"')
    hand = hand.replace('<body name="hand" ', '<body name="hand" childclass="fh_panda" ', 1)
    text = f"""<mujoco model="franka_hand">
<compiler angle="radian" autolimits="true"/>
{defaults}
<worldbody>{hand}</worldbody>
<tendon><fixed name="width"><joint joint="finger_joint1" coef="1"/><joint joint="finger_joint2" coef="1"/>
</fixed></tendon>
<equality><joint joint1="finger_joint1" joint2="finger_joint2" solimp="0.95 0.99 0.001" solref="0.005 1"/>
</equality>
</mujoco>"""
    return _write("franka_hand", text)


def rig_mjcf_path(visual: str = "mesh") -> Path:
    """The whole rig scene (no task objects)."""
    return _write(f"panda_rig_{visual}", build_mjcf((), visual=visual))
