"""MJCF of the rig: Panda arm + Franka Hand on a table, cameras, lights and task objects.

The arm's kinematic and inertial parameters are MuJoCo Menagerie's
``franka_emika_panda`` (Apache-2.0), the same numbers gym-hil ships. The Franka
Hand is written here after Menagerie's ``hand.xml``: two prismatic fingers
(0 .. 0.04 m each, so 0 .. 0.08 m opening) coupled by an equality constraint,
driven by one force-limited position servo on the opening (a fixed tendon).

Speed choices: the arm links never collide (only the hand, the fingers, the
table and the objects do), all collision geoms are primitives, and the visual
geoms are primitives too unless ``visual="mesh"`` asks for gym-hil's Panda
meshes (about 4x slower to render on a CPU, nicer for the 640x480 camera nodes).

The base frame ``panda_link0`` is the world frame; the table top is z = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

#: The TCP (franky's default end effector) is 0.1034 m along the hand's z axis.
TCP_OFFSET = 0.1034
HAND_OFFSET = 0.107  # flange: link7 origin -> hand
HOME_JOINTS = (0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785)
ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("finger_joint1", "finger_joint2")
TORQUE_LIMITS = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
CAMERAS = ("front", "wrist")


@dataclass(frozen=True)
class ObjectSpec:
    """A task object. ``kind``: box (free), peg (free), bin, target, hole (mocap, movable at reset)."""

    name: str
    kind: str = "box"
    size: tuple[float, ...] = (0.02, 0.02, 0.02)  # half sizes, m
    rgba: tuple[float, float, float, float] = (0.8, 0.1, 0.1, 1.0)
    mass: float = 0.05
    params: dict = field(default_factory=dict)


# ------------------------------------------------------------------- arm text
# (body, pos, quat, inertial, joint range, primitive visual capsules "fromto r")
_LINKS = [
    ("link1", "0 0 0.333", "1 0 0 0", 'mass="4.970684" pos="0.003875 0.002081 -0.04762" '
     'fullinertia="0.70337 0.70661 0.0091170 -0.00013900 0.0067720 0.019169"', "-2.8973 2.8973",
     ["0 0 -0.19 0 0 -0.03 0.06", "0 -0.06 0 0 0.0 0 0.06"]),
    ("link2", "0 0 0", "1 -1 0 0", 'mass="0.646926" pos="-0.003141 -0.02872 0.003495" '
     'fullinertia="0.0079620 2.8110e-2 2.5995e-2 -3.925e-3 1.0254e-2 7.04e-4"', "-1.7628 1.7628",
     ["0 0 -0.04 0 0 0.07 0.06", "0 -0.03 0 0 -0.15 0 0.06"]),
    ("link3", "0 -0.316 0", "1 1 0 0", 'mass="3.228604" pos="2.7518e-2 3.9252e-2 -6.6502e-2" '
     'fullinertia="3.7242e-2 3.6155e-2 1.083e-2 -4.761e-3 -1.1396e-2 -1.2805e-2"', "-2.8973 2.8973",
     ["0 0 -0.12 0 0 0 0.06", "0.0 0 0 0.0825 0.05 0 0.055"]),
    ("link4", "0.0825 0 0", "1 1 0 0", 'mass="3.587895" pos="-5.317e-2 1.04419e-1 2.7454e-2" '
     'fullinertia="2.5853e-2 1.9552e-2 2.8323e-2 7.796e-3 -1.332e-3 8.641e-3"', "-3.0718 -0.0698",
     ["0 0 -0.04 0 0 0.09 0.06", "0 0 0 -0.0825 0.1 0 0.055"]),
    ("link5", "-0.0825 0.384 0", "1 -1 0 0", 'mass="1.225946" pos="-1.1953e-2 4.1065e-2 -3.8437e-2" '
     'fullinertia="3.5549e-2 2.9474e-2 8.627e-3 -2.117e-3 -4.037e-3 2.29e-4"', "-2.8973 2.8973",
     ["0 0 -0.24 0 0 0 0.055", "0 0.03 -0.24 0 0.08 -0.12 0.04"]),
    ("link6", "0 0 0", "1 1 0 0", 'mass="1.666555" pos="6.0149e-2 -1.4117e-2 -1.0517e-2" '
     'fullinertia="1.964e-3 4.354e-3 5.433e-3 1.09e-4 -1.158e-3 3.41e-4"', "-0.0175 3.7525",
     ["0 0 -0.035 0 0 0.035 0.05", "0 0 0 0.088 0 0 0.045"]),
    ("link7", "0.088 0 0", "1 1 0 0", 'mass="7.35522e-01" pos="1.0517e-2 -4.252e-3 6.1597e-2" '
     'fullinertia="1.2516e-2 1.0027e-2 4.815e-3 -4.28e-4 -1.196e-3 -7.41e-4"', "-2.8973 2.8973",
     ["0 0 0.05 0 0 0.1 0.045", "0.0 0.0 0.08 0.06 0.06 0.08 0.02"]),
]

# gym-hil / Menagerie visual meshes per link: (mesh file stem, material)
_W, _O, _D = "white", "off_white", "dark_grey"
_MESHES = {
    "link0": [("link0_0", _O), ("link0_1", _D), ("link0_2", _O), ("link0_3", _D), ("link0_4", _O),
              ("link0_5", _D), ("link0_7", _W), ("link0_8", _W), ("link0_9", _D), ("link0_10", _O),
              ("link0_11", _W)],
    "link1": [("link1", _W)],
    "link2": [("link2", _W)],
    "link3": [("link3_0", _W), ("link3_1", _W), ("link3_2", _W), ("link3_3", _D)],
    "link4": [("link4_0", _W), ("link4_1", _W), ("link4_2", _D), ("link4_3", _W)],
    "link5": [("link5_0", _D), ("link5_1", _W), ("link5_2", _W)],
    "link6": [(f"link6_{i}", m) for i, m in enumerate(
        [_O, _W, _D, _W, _W, _W, _W, "light_blue", "light_blue", _D, _D, _W, "green", _W, _D, _D, _W])],
    "link7": [("link7_0", _W)] + [(f"link7_{i}", _D) for i in range(1, 7)] + [("link7_7", _W)],
}


def gym_hil_mesh_dir() -> Path:
    """Directory of the Panda meshes shipped in the gym-hil wheel."""
    try:
        root = resources.files("gym_hil") / "assets" / "franka_emika_panda" / "meshes"
    except ModuleNotFoundError as e:  # pragma: no cover - gym-hil is a dependency
        raise FileNotFoundError(
            "visual='mesh' needs the Panda meshes from the gym-hil package; install gym-hil "
            "or use visual='primitive'"
        ) from e
    return Path(str(root))


def _look_at(pos: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> str:
    """MJCF ``xyaxes`` of a camera at ``pos`` looking at ``target``."""
    z = np.asarray(pos, float) - np.asarray(target, float)
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-6:
        x = np.array([0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return " ".join(f"{v:.5f}" for v in (*x, *y))


FRONT_CAMERA_POS = np.array([1.0, 0.0, 0.5])
FRONT_CAMERA_TARGET = np.array([0.42, 0.0, 0.1])


def _arm_xml(visual: str, with_hand: bool = True) -> str:
    def visuals(link: str, capsules: list[str]) -> str:
        if visual == "mesh":
            return "".join(
                f'<geom class="vis" mesh="{stem}" material="{mat}"/>' for stem, mat in _MESHES[link]
            )
        out = []
        for c in capsules:
            v = c.split()
            out.append(f'<geom class="vis" type="capsule" fromto="{" ".join(v[:6])}" size="{v[6]}" '
                       f'material="{_W if len(out) == 0 else _O}"/>')
        return "".join(out)

    base = visuals("link0", []) if visual == "mesh" else (
        '<geom class="vis" type="cylinder" pos="-0.04 0 0.07" size="0.09 0.07" material="off_white"/>')
    xml = ['<body name="link0" childclass="panda">',
           '<inertial mass="0.629769" pos="-0.041018 -0.00014 0.049974" '
           'fullinertia="0.00315 0.00388 0.004285 8.2904e-7 0.00015 8.2299e-6"/>', base]
    for i, (name, pos, quat, inertial, rng, caps) in enumerate(_LINKS):
        xml.append(f'<body name="{name}" pos="{pos}" quat="{quat}"><inertial {inertial}/>')
        xml.append(f'<joint name="joint{i + 1}" range="{rng}"/>')
        xml.append(visuals(name, caps))
    if with_hand:
        xml.append(_hand_xml())
    xml.append("</body>" * (len(_LINKS) + 1))
    return "\n".join(xml)


def _hand_xml(camera: bool = True) -> str:
    """Franka Hand after Menagerie hand.xml, with primitive geoms; TCP site and wrist camera."""
    cam_pos = np.array([0.065, 0.0, 0.035])
    cam = (f'<camera name="wrist" pos="{cam_pos[0]} {cam_pos[1]} {cam_pos[2]}" fovy="58" '
           f'xyaxes="{_look_at(cam_pos, np.array([0.0, 0.0, 0.16]), up=(1.0, 0.0, 0.0))}"/>'
           if camera else "")
    finger = (
        '<inertial mass="0.015" pos="0 0 0" diaginertia="2.375e-6 2.375e-6 7.5e-7"/>'
        '<geom class="vis" type="box" size="0.0085 0.006 0.027" pos="0 0.007 0.027" material="off_white"/>'
        '<geom class="pad" size="0.0085 0.004 0.012" pos="0 0.004 0.042"/>'
    )
    return f"""
<body name="hand" pos="0 0 {HAND_OFFSET}" quat="0.9238795 0 0 -0.3826834">
  <inertial mass="0.73" pos="-0.01 0 0.03" diaginertia="0.001 0.0025 0.0017"/>
  <geom class="vis" type="box" size="0.022 0.1 0.025" pos="0 0 0.033" material="off_white"/>
  <geom class="vis" type="cylinder" size="0.04 0.008" pos="0 0 0.008" material="dark_grey"/>
  <geom class="handcol" type="box" size="0.022 0.1 0.025" pos="0 0 0.033"/>
  <site name="tcp" pos="0 0 {TCP_OFFSET}" size="0.005" rgba="1 0 0 1" group="4"/>
  {cam}
  <body name="left_finger" pos="0 0 0.0584">
    <joint name="finger_joint1" class="finger"/>{finger}
  </body>
  <body name="right_finger" pos="0 0 0.0584" quat="0 0 0 1">
    <joint name="finger_joint2" class="finger"/>{finger}
  </body>
</body>"""


def _defaults() -> str:
    return """
<default>
  <default class="panda">
    <joint armature="0.1" damping="1" axis="0 0 1"/>
    <default class="vis"><geom contype="0" conaffinity="0" group="2" density="0"/></default>
    <default class="handcol"><geom contype="1" conaffinity="1" group="3" density="0"/></default>
    <default class="pad"><geom type="box" contype="1" conaffinity="1" group="3" density="0" condim="4"
      friction="1.2 0.01 0.0001" priority="1" solref="0.005 1" rgba="0.15 0.15 0.15 1"/></default>
    <default class="finger"><joint type="slide" axis="0 1 0" range="0 0.04" armature="0.01" damping="2"/>
    </default>
  </default>
  <default class="obj"><geom condim="4" friction="1 0.01 0.0001" solref="0.005 1"/></default>
</default>"""


def _materials(visual: str) -> str:
    mats = """
<material name="white" rgba="1 1 1 1"/>
<material name="off_white" rgba="0.901961 0.921569 0.929412 1"/>
<material name="dark_grey" rgba="0.25 0.25 0.25 1"/>
<material name="green" rgba="0 1 0 1"/>
<material name="light_blue" rgba="0.039216 0.541176 0.780392 1"/>
<material name="table" rgba="0.62 0.55 0.45 1"/>
<material name="floor" rgba="0.3 0.3 0.32 1"/>"""
    if visual == "mesh":
        mats += "".join(
            f'<mesh name="{stem}" file="{stem}.obj"/>' for link in _MESHES.values() for stem, _ in link
        )
    return mats


def _object_xml(o: ObjectSpec) -> str:
    rgba = " ".join(f"{c:.3f}" for c in o.rgba)
    s = " ".join(f"{v:.4f}" for v in o.size)
    if o.kind in ("box", "peg"):
        return (f'<body name="{o.name}" pos="0.5 0 {o.size[2]}"><freejoint name="{o.name}"/>'
                f'<geom name="{o.name}" class="obj" type="box" size="{s}" rgba="{rgba}" mass="{o.mass}"/>'
                "</body>")
    if o.kind == "target":  # flat marker on the table, no collision
        return (f'<body name="{o.name}" mocap="true" pos="0.5 0 0"><geom name="{o.name}" type="cylinder" '
                f'size="{o.size[0]} 0.0008" pos="0 0 0.0008" contype="0" conaffinity="0" rgba="{rgba}"/>'
                "</body>")
    if o.kind == "bin":  # open box: half inner size (hx, hy), wall height h, wall thickness t
        hx, hy, h = o.size[:3]
        t = 0.005
        walls = [
            (0, 0, t / 2, hx + t, hy + t, t / 2),
            (hx + t / 2, 0, h / 2, t / 2, hy + t, h / 2),
            (-hx - t / 2, 0, h / 2, t / 2, hy + t, h / 2),
            (0, hy + t / 2, h / 2, hx + t, t / 2, h / 2),
            (0, -hy - t / 2, h / 2, hx + t, t / 2, h / 2),
        ]
        geoms = "".join(
            f'<geom class="obj" type="box" pos="{x:.4f} {y:.4f} {z:.4f}" size="{a:.4f} {b:.4f} {c:.4f}" '
            f'rgba="{rgba}"/>' for x, y, z, a, b, c in walls
        )
        return f'<body name="{o.name}" mocap="true" pos="0.5 0 0">{geoms}</body>'
    if o.kind == "hole":  # square block (half outer side ho, half height hz) with a square hole (half hh)
        ho, hz, hh = o.size[:3]
        w = (ho - hh) / 2
        c = hh + w
        boxes = [(0, c, ho, w), (0, -c, ho, w), (c, 0, w, hh), (-c, 0, w, hh)]
        geoms = "".join(
            f'<geom class="obj" type="box" pos="{x:.4f} {y:.4f} {hz:.4f}" size="{a:.4f} {b:.4f} {hz:.4f}" '
            f'rgba="{rgba}"/>' for x, y, a, b in boxes
        )
        return f'<body name="{o.name}" mocap="true" pos="0.5 0 0">{geoms}</body>'
    raise ValueError(f"object {o.name!r}: unknown kind {o.kind!r}; use box, peg, target, bin or hole")


def build_mjcf(
    objects: tuple[ObjectSpec, ...] = (),
    *,
    visual: str = "primitive",
    timestep: float = 0.002,
    gripper_kp: float = 2000.0,
    gripper_kv: float = 60.0,
) -> str:
    """The whole scene as an MJCF string (the arm meshes, if any, resolve through ``meshdir``)."""
    if visual not in ("primitive", "mesh"):
        raise ValueError(f"visual={visual!r}: use 'primitive' (fast) or 'mesh' (gym-hil meshes)")
    meshdir = f' meshdir="{gym_hil_mesh_dir()}"' if visual == "mesh" else ""
    cam_axes = _look_at(FRONT_CAMERA_POS, FRONT_CAMERA_TARGET)
    fp = " ".join(f"{v:.4f}" for v in FRONT_CAMERA_POS)
    objs = "\n".join(_object_xml(o) for o in objects)
    return f"""<mujoco model="panda_rig">
<compiler angle="radian" autolimits="true"{meshdir}/>
<option timestep="{timestep}" integrator="implicitfast" cone="elliptic" impratio="10"/>
<size memory="8M"/>
<visual><global offwidth="1280" offheight="960"/><quality shadowsize="0" offsamples="0"/>
  <headlight ambient="0.4 0.4 0.4" diffuse="0.5 0.5 0.5" specular="0.1 0.1 0.1"/></visual>
{_defaults()}
<asset>{_materials(visual)}</asset>
<worldbody>
  <light name="top" pos="0.4 0 1.5" dir="0 0 -1" diffuse="0.6 0.6 0.6" castshadow="false"/>
  <light name="side" pos="0.4 -1.0 1.0" dir="0 0.7 -0.7" diffuse="0.3 0.3 0.3" castshadow="false"/>
  <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" material="floor" contype="0" conaffinity="0"/>
  <geom name="table" type="box" size="0.6 0.8 0.02" pos="0.45 0 -0.02" material="table" condim="3"/>
  <camera name="front" pos="{fp}" xyaxes="{cam_axes}" fovy="55"/>
  {_arm_xml(visual)}
  {objs}
</worldbody>
<tendon><fixed name="width"><joint joint="finger_joint1" coef="1"/><joint joint="finger_joint2" coef="1"/>
</fixed></tendon>
<equality><joint joint1="finger_joint1" joint2="finger_joint2" solimp="0.95 0.99 0.001" solref="0.005 1"/>
</equality>
<contact><exclude body1="hand" body2="left_finger"/><exclude body1="hand" body2="right_finger"/>
<exclude body1="left_finger" body2="right_finger"/></contact>
<actuator>
  {"".join(f'<motor name="actuator{i + 1}" joint="joint{i + 1}" ctrlrange="-{t} {t}"/>'
           for i, t in enumerate(TORQUE_LIMITS))}
  <general name="gripper" tendon="width" ctrlrange="0 0.08" forcelimited="true" forcerange="-70 70" biastype="affine"
    gainprm="{gripper_kp}" biasprm="0 -{gripper_kp} -{gripper_kv}"/>
</actuator>
</mujoco>"""
