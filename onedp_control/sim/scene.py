"""MJCF for the pick-and-place cell, built from a TaskSpec.

The Panda is our own MJCF: the kinematic chain (link offsets, joint axes and limits, flange and
hand offsets) follows Franka's published Panda kinematics; every link is drawn as capsules
between joint origins. Primitive geometry with shadows and reflections off keeps two 120x160
cameras rendering at hundreds of frames per second on a CPU, where the textured meshes of the
public models render at a few.
"""

from __future__ import annotations

import numpy as np

from onedp_control.sim.tasks import TaskSpec

# (body, position in parent, quaternion in parent (w x y z), joint range) for links 1..7:
# Franka's Denavit-Hartenberg (Craig) parameters written as MuJoCo body frames.
_H = float(np.sqrt(0.5))
PANDA_LINKS: tuple[tuple[str, tuple[float, ...], tuple[float, ...], tuple[float, float]], ...] = (
    ("link1", (0.0, 0.0, 0.333), (1.0, 0.0, 0.0, 0.0), (-2.8973, 2.8973)),
    ("link2", (0.0, 0.0, 0.0), (_H, -_H, 0.0, 0.0), (-1.7628, 1.7628)),
    ("link3", (0.0, -0.316, 0.0), (_H, _H, 0.0, 0.0), (-2.8973, 2.8973)),
    ("link4", (0.0825, 0.0, 0.0), (_H, _H, 0.0, 0.0), (-3.0718, -0.0698)),
    ("link5", (-0.0825, 0.384, 0.0), (_H, -_H, 0.0, 0.0), (-2.8973, 2.8973)),
    ("link6", (0.0, 0.0, 0.0), (_H, _H, 0.0, 0.0), (-0.0175, 3.7525)),
    ("link7", (0.088, 0.0, 0.0), (_H, _H, 0.0, 0.0), (-2.8973, 2.8973)),
)
# Flange 0.107 m along link 7's z, hand turned -45 degrees about it.
HAND_POS = (0.0, 0.0, 0.107)
HAND_QUAT = (0.9238795, 0.0, 0.0, -0.3826834)
TCP_OFFSET = 0.1034  # franky's end-effector frame: 10.34 cm past the flange, between the pads
FINGER_BASE = 0.0584  # finger joint origin along the hand's z
MAX_FINGER = 0.04  # each finger travels 0..4 cm: gripper width 0..8 cm
# The Panda's "ready" posture: end effector above the table, pointing down.
HOME_QPOS = (0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785)
# Position-servo gains per joint (N m / rad, N m s / rad) and torque limits (N m).
JOINT_KP = (4500.0, 4500.0, 3500.0, 3500.0, 2000.0, 2000.0, 2000.0)
JOINT_KV = (450.0, 450.0, 350.0, 350.0, 200.0, 200.0, 200.0)
JOINT_TORQUE = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)

FRONT_CAMERA = "front"  # D415's place: across the table, looking at the robot
WRIST_CAMERA = "wrist"  # D435's place: on the hand, looking along the gripper
CAMERAS = (FRONT_CAMERA, WRIST_CAMERA)


def _fmt(values) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def look_at_xyaxes(position, target, up=(0.0, 0.0, 1.0)) -> str:
    """MuJoCo camera `xyaxes` for a camera at `position` looking at `target` (-z is forward)."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    forward /= np.linalg.norm(forward)
    x_axis = np.cross(forward, up)
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(x_axis, forward)
    return _fmt(np.concatenate([x_axis, y_axis]))


def _link_geoms(child_pos: tuple[float, ...]) -> str:
    """A joint housing along z, and a limb to the next joint origin."""
    geoms = ['<geom type="capsule" size="0.06" fromto="0 0 -0.055 0 0 0.055"/>']
    if np.linalg.norm(child_pos) > 1e-6:
        geoms.append(f'<geom type="capsule" size="0.05" fromto="0 0 0 {_fmt(child_pos)}"/>')
    return "".join(geoms)


def _panda_xml() -> str:
    """The arm as nested bodies, the hand with two fingers and the wrist camera."""
    hand = f"""
      <body name="hand" pos="{_fmt(HAND_POS)}" quat="{_fmt(HAND_QUAT)}" gravcomp="1">
        <geom type="box" size="0.025 0.1 0.03" pos="0 0 0.03" rgba="0.85 0.85 0.88 1"/>
        <geom type="cylinder" size="0.04 0.012" pos="0 0 -0.005" rgba="0.25 0.25 0.28 1"/>
        <site name="tcp" pos="0 0 {TCP_OFFSET}" size="0.005" rgba="1 0 0 0" group="4"/>
        <body name="camera_mount" pos="0.06 0 0.03">
          <geom type="box" size="0.0125 0.045 0.0125" pos="0 0 -0.014" rgba="0.15 0.15 0.17 1"/>
          <camera name="{WRIST_CAMERA}" fovy="58"
                  xyaxes="{look_at_xyaxes((0.06, 0, 0.03), (0.0, 0, 0.25), up=(1, 0, 0))}"/>
        </body>
        <body name="left_finger" pos="0 0 {FINGER_BASE}" gravcomp="1">
          <joint name="finger_left" type="slide" axis="0 1 0" range="0 {MAX_FINGER}"
                 damping="20" armature="0.05"/>
          <geom class="pad" size="0.01 0.006 0.026" pos="0 0.006 0.029"/>
        </body>
        <body name="right_finger" pos="0 0 {FINGER_BASE}" quat="0 0 0 1" gravcomp="1">
          <joint name="finger_right" type="slide" axis="0 1 0" range="0 {MAX_FINGER}"
                 damping="20" armature="0.05"/>
          <geom class="pad" size="0.01 0.006 0.026" pos="0 0.006 0.029"/>
        </body>
      </body>"""
    xml = hand
    child_pos: tuple[float, ...] = HAND_POS
    for name, pos, quat, (low, high) in reversed(PANDA_LINKS):
        joint = f'<joint name="joint{name[-1]}" range="{low} {high}"/>'
        xml = (
            f'<body name="{name}" pos="{_fmt(pos)}" quat="{_fmt(quat)}" gravcomp="1">'
            f"{joint}{_link_geoms(child_pos)}{xml}</body>"
        )
        child_pos = pos
    base = (
        '<geom type="cylinder" size="0.075 0.05" pos="0 0 0.05"/>'
        f'<geom type="capsule" size="0.06" fromto="0 0 0.05 {_fmt(PANDA_LINKS[0][1])}"/>'
    )
    return f'<body name="link0" childclass="panda">{base}{xml}</body>'


def _bin_xml(task: TaskSpec) -> str:
    spec = task.bin
    half = spec.outer_size / 2
    t = spec.wall_thickness / 2
    h = spec.wall_height / 2
    walls = [
        (f"{half - t} 0 {h}", f"{t} {half} {h}"),
        (f"{-half + t} 0 {h}", f"{t} {half} {h}"),
        (f"0 {half - t} {h}", f"{half} {t} {h}"),
        (f"0 {-half + t} {h}", f"{half} {t} {h}"),
    ]
    geoms = "".join(f'<geom class="bin" pos="{p}" size="{s}"/>' for p, s in walls)
    floor = f'<geom class="bin" pos="0 0 0.003" size="{half} {half} 0.003"/>'
    return f'<body name="bin" pos="{_fmt(spec.center)} 0">{floor}{geoms}</body>'


def _carton_xml(task: TaskSpec) -> str:
    sx, sy, sz = task.carton.half_size
    return f"""
    <body name="carton" pos="{_fmt(task.carton.area_center)} {sz}">
      <freejoint name="carton"/>
      <geom name="carton" type="box" size="{sx} {sy} {sz}" mass="{task.carton.mass_kg}"
            rgba="0.96 0.96 0.93 1" friction="1.0 0.01 0.001" condim="4"/>
      <geom type="box" size="{sx * 1.01} {sy * 1.01} {sz * 0.3}" pos="0 0 {sz * 0.45}"
            rgba="0.15 0.35 0.8 1" contype="0" conaffinity="0" mass="0"/>
      <geom type="box" size="{sx * 0.3} {sy * 0.9} 0.006" pos="0 0 {sz + 0.006}"
            rgba="0.15 0.35 0.8 1" contype="0" conaffinity="0" mass="0"/>
    </body>"""


def build_mjcf(task: TaskSpec) -> str:
    front_pos = (1.05, 0.0, 0.62)
    front_target = (0.42, -0.02, 0.12)
    return f"""
<mujoco model="{task.name}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{task.image_width}" offheight="{task.image_height}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <default>
    <default class="panda">
      <joint armature="0.1" damping="1"/>
      <geom contype="0" conaffinity="0" rgba="0.93 0.93 0.95 1"/>
      <default class="pad">
        <geom type="box" contype="1" conaffinity="1" condim="4" friction="1.5 0.02 0.002"
              solref="0.004 1" rgba="0.2 0.2 0.22 1" mass="0.03"/>
      </default>
    </default>
    <default class="bin">
      <geom type="box" rgba="0.55 0.38 0.22 1"/>
    </default>
  </default>
  <worldbody>
    <light directional="true" pos="0 0 2" dir="0.2 0.1 -1" diffuse="0.45 0.45 0.45"
           castshadow="false"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.76" rgba="0.35 0.36 0.38 1"/>
    <geom name="table" type="box" size="0.7 0.7 0.02" pos="0.35 0 -0.02"
          rgba="0.72 0.66 0.56 1"/>
    <geom name="area" type="box" size="{task.carton.area_size[0] / 2} {task.carton.area_size[1] / 2}
          0.0005" pos="{_fmt(task.carton.area_center)} 0.0005" rgba="0.6 0.7 0.9 1"
          contype="0" conaffinity="0"/>
    <camera name="{FRONT_CAMERA}" pos="{_fmt(front_pos)}" fovy="50"
            xyaxes="{look_at_xyaxes(front_pos, front_target)}"/>
    {_panda_xml()}
    {_bin_xml(task)}
    {_carton_xml(task)}
  </worldbody>
  <equality>
    <joint joint1="finger_left" joint2="finger_right" polycoef="0 1 0 0 0"/>
  </equality>
  <actuator>
    {
        "".join(
            f'<position name="a{i + 1}" joint="joint{i + 1}" kp="{kp}" kv="{kv}" '
            f'forcerange="{-tau} {tau}"/>'
            for i, (kp, kv, tau) in enumerate(zip(JOINT_KP, JOINT_KV, JOINT_TORQUE, strict=True))
        )
    }
    <position name="gripper" joint="finger_left" kp="2000" kv="40" forcerange="-40 40"
              ctrlrange="0 {MAX_FINGER}"/>
  </actuator>
</mujoco>"""
