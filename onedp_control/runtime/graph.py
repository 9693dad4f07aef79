"""The node graph, defined once: names, executables, parameters, remappings and topics.

`launch/pnp_milk.launch.py` (ROS 2 launch) and `onedp run` (the runner for machines with only
the PyPI wheels) both build their processes from `pnp_milk_graph`, so they cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PACKAGE = "onedp_control"
CAMERAS = ("front", "wrist")

# Topics (realsense-ros style names for the cameras).
IMAGE_TOPIC = "/camera/{camera}/color/image_raw"
CAMERA_INFO_TOPIC = "/camera/{camera}/color/camera_info"
EE_POSE_TOPIC = "/robot/ee_pose"  # geometry_msgs/PoseStamped, measured
JOINT_STATES_TOPIC = "/robot/joint_states"  # sensor_msgs/JointState, arm + fingers
COMMAND_TOPIC = "/robot/command"  # trajectory_msgs/JointTrajectory, one point per command
CHUNK_TOPIC = "/policy/action_chunk"  # trajectory_msgs/JointTrajectory, per-step times
POLICY_TIMING_TOPIC = "/policy/timing"  # diagnostic_msgs/DiagnosticStatus
HOLD_TOPIC = "/watchdog/hold"  # std_msgs/Bool, at the watchdog's rate
EPISODE_TOPIC = "/sim/episode"  # std_msgs/String (JSON), one per finished episode
CARTON_POSE_TOPIC = "/sim/carton_pose"  # geometry_msgs/PoseStamped, the sim's ground truth
DIAGNOSTICS_TOPIC = "/diagnostics"
RECOVER_SERVICE = "/robot/recover"  # std_srvs/Trigger
RESUME_SERVICE = "/watchdog/resume"  # std_srvs/Trigger
# What a teleoperation device commands (any teleop node); the recorder records them as actions.
TELEOP_TARGET_TOPIC = "/teleop/target_pose"  # geometry_msgs/PoseStamped, end-effector target
TELEOP_GRIPPER_TOPIC = "/teleop/gripper_width"  # std_msgs/Float64, gripper width target (m)
RECORDER_START_SERVICE = "/recorder/start"  # std_srvs/Trigger: open an episode
RECORDER_STOP_SERVICE = "/recorder/stop"  # std_srvs/Trigger: save it into the dataset
RECORDER_DISCARD_SERVICE = "/recorder/discard"  # std_srvs/Trigger: drop it
CALIBRATION_CAPTURE_SERVICE = "/calibration/capture"  # std_srvs/Trigger: keep a sample
CALIBRATION_SOLVE_SERVICE = "/calibration/solve"  # std_srvs/Trigger: solve, write the files
CALIBRATION_RESET_SERVICE = "/calibration/reset"  # std_srvs/Trigger: drop the samples
# std_msgs/String (JSON {"target": node, "fault": name, "value": ...} or {"target", "clear"}),
# listened to only by nodes started with fault_injection: true (`onedp faults`).
FAULT_TOPIC = "/onedp/fault"

# The action layout on the wire (JointTrajectory joint names).
ACTION_NAMES = (
    "ee_x",
    "ee_y",
    "ee_z",
    *(f"ee_rot6d_{i}" for i in range(6)),
    "gripper_width",
)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    executable: str  # console script in lib/onedp_control (what `ros2 run` starts)
    module: str  # the same program as `python -m module` (what `onedp run` starts)
    lifecycle: bool  # a managed node: configure + activate before it works
    parameters: dict = field(default_factory=dict)  # overrides on top of the config file


@dataclass(frozen=True)
class LaunchArguments:
    config: str  # the task's params file
    sim: bool = False
    engine: str = ""  # empty: the config file's policy.engine
    front_serial: str = ""
    wrist_serial: str = ""
    robot_host: str = ""
    # Record demonstrations instead of running a policy: a teleop device drives the robot
    # through the teleop node, the recorder writes episodes into `dataset`.
    record: bool = False
    dataset: str = ""  # empty: the recorder's default


def node_spec(name: str, lifecycle: bool, parameters: dict) -> NodeSpec:
    return NodeSpec(
        name=name,
        executable=f"{name}_node",
        module=f"onedp_control.ros.{name}_node",
        lifecycle=lifecycle,
        parameters={key: value for key, value in parameters.items() if value != ""},
    )


def pnp_milk_graph(args: LaunchArguments) -> list[NodeSpec]:
    """Policy and watchdog (or, recording, teleop, watchdog and recorder), plus either the
    MuJoCo cell (sim) or the cameras and the robot."""
    if args.record:
        nodes = [
            node_spec("teleop", False, {}),
            node_spec("watchdog", False, {}),
            node_spec("recorder", False, {"dataset": args.dataset}),
        ]
    else:
        nodes = [
            node_spec("policy", False, {"engine": args.engine}),
            node_spec("watchdog", False, {}),
        ]
    if args.sim:
        nodes.append(node_spec("sim", True, {}))
    else:
        cameras = {"front_serial": args.front_serial, "wrist_serial": args.wrist_serial}
        nodes.append(node_spec("camera", True, cameras))
        nodes.append(node_spec("robot", True, {"robot_host": args.robot_host}))
    return nodes
