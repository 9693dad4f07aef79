"""pnp_milk controller: `ros2 launch onedp_control pnp_milk.launch.py [sim:=true] [engine:=FILE]
[config:=FILE] [front_serial:=S] [wrist_serial:=S] [robot_host:=HOST]`; with `record:=true
[dataset:=DIR]` a teleop device drives the robot instead of the policy and the recorder writes
demonstrations (services /recorder/start, /recorder/stop, /recorder/discard).

The nodes, their executables, parameters and lifecycle come from
onedp_control.runtime.graph.pnp_milk_graph, the definition `onedp run` reads too. Lifecycle
nodes (camera, robot, sim) are configured at start and activated once configured; a node whose
configure fails (a camera serial not found, the robot unreachable) stays unconfigured and the
robot never moves.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from onedp_control.runtime.graph import PACKAGE, LaunchArguments, pnp_milk_graph

ARGUMENTS = {
    "sim": ("false", "true: the MuJoCo cell instead of the cameras and the robot"),
    "engine": ("", "model file (.pt, .onnx, .engine); empty: the shipped one-step model"),
    "config": ("", "runtime params file; empty: the package's config/pnp_milk.yaml"),
    "front_serial": ("", "serial number of the front D415"),
    "wrist_serial": ("", "serial number of the wrist D435"),
    "robot_host": ("", "the robot's address; empty: the config file's"),
    "record": ("false", "true: record teleoperated demonstrations instead of running the policy"),
    "dataset": ("", "recording: the dataset directory; empty: the recorder's default"),
}


def _change_state(node, transition: int) -> EmitEvent:
    return EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition)
    )


def _nodes(context):
    share = get_package_share_directory(PACKAGE)
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    arguments = LaunchArguments(
        config=value["config"] or os.path.join(share, "config", "pnp_milk.yaml"),
        sim=value["sim"].lower() in ("true", "1", "yes"),
        engine=value["engine"] or os.path.join(share, "models", "pnp_milk", "onedp_s.pt"),
        front_serial=value["front_serial"],
        wrist_serial=value["wrist_serial"],
        robot_host=value["robot_host"],
        record=value["record"].lower() in ("true", "1", "yes"),
        dataset=value["dataset"],
    )
    actions = []
    for spec in pnp_milk_graph(arguments):
        common = {
            "package": PACKAGE,
            "executable": spec.executable,
            "name": spec.name,
            "namespace": "",
            "parameters": [arguments.config, spec.parameters],
            "output": "screen",
        }
        if not spec.lifecycle:
            actions.append(Node(**common))
            continue
        node = LifecycleNode(**common)
        activate_when_configured = RegisterEventHandler(
            OnStateTransition(
                target_lifecycle_node=node,
                goal_state="inactive",
                entities=[_change_state(node, Transition.TRANSITION_ACTIVATE)],
            )
        )
        actions += [
            activate_when_configured,
            node,
            _change_state(node, Transition.TRANSITION_CONFIGURE),
        ]
    return actions


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, description) in ARGUMENTS.items()
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_nodes)])
