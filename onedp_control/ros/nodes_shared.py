"""Publishers and subscriptions the robot node and the sim node have in common: they are the
same robot to the rest of the graph (measured pose, joint states, commands, chunks, hold)."""

from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from onedp_control.robots.base import RobotError, RobotState
from onedp_control.ros.common import (
    LATCHED_QOS,
    RELIABLE_QOS,
    SENSOR_QOS,
    chunk_from_message,
    pose_message,
    to_stamp,
)
from onedp_control.runtime.command_loop import Command, CommandLoop
from onedp_control.runtime.graph import (
    ACTION_NAMES,
    CHUNK_TOPIC,
    COMMAND_TOPIC,
    DIAGNOSTICS_TOPIC,
    EE_POSE_TOPIC,
    HOLD_TOPIC,
    JOINT_STATES_TOPIC,
    RECOVER_SERVICE,
)

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")


class RobotInterfaces:
    """Wires a CommandLoop to the graph's topics on `node`."""

    def __init__(self, node: Node, loop: CommandLoop) -> None:
        self.node = node
        self.loop = loop
        self.pose = node.create_publisher(PoseStamped, EE_POSE_TOPIC, SENSOR_QOS)
        self.joints = node.create_publisher(JointState, JOINT_STATES_TOPIC, SENSOR_QOS)
        self.commands = node.create_publisher(JointTrajectory, COMMAND_TOPIC, RELIABLE_QOS)
        node.create_subscription(JointTrajectory, CHUNK_TOPIC, self._on_chunk, RELIABLE_QOS)
        node.create_subscription(Bool, HOLD_TOPIC, self._on_hold, LATCHED_QOS)
        node.create_service(Trigger, RECOVER_SERVICE, self._on_recover)
        self.diagnostics = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, RELIABLE_QOS)
        self.refused_chunks = 0
        self._last_reason: str | None = None

    def read_state(self) -> RobotState | None:
        """This tick's state, published; a read failure or a reported error is a robot error
        (the loop holds until /robot/recover)."""
        try:
            state = self.loop.robot.get_state()
        except RobotError as error:
            self.loop.on_robot_error(str(error))
            return None
        if state.error:
            self.loop.on_robot_error(state.error)
        self.publish_state(state)
        return state

    def _on_recover(self, request: Trigger.Request, response: Trigger.Response):
        try:
            self.loop.robot.recover()
        except RobotError as error:
            response.success, response.message = False, str(error)
            return response
        self.loop.on_robot_error(None)
        response.success, response.message = True, "recovered"
        return response

    def _on_chunk(self, message: JointTrajectory) -> None:
        try:
            chunk = chunk_from_message(message)
        except ValueError as error:
            self.refused_chunks += 1
            self.node.get_logger().error(f"chunk refused: {error}")
            return
        self.loop.scheduler.offer(chunk)

    def _on_hold(self, message: Bool) -> None:
        self.loop.on_watchdog(bool(message.data), time.time())

    def publish_state(self, state: RobotState) -> None:
        stamp = to_stamp(state.stamp)
        self.pose.publish(pose_message(state.ee_pos, state.ee_rot, state.stamp))
        joints = JointState()
        joints.header.stamp = stamp
        joints.name = [*ARM_JOINTS, *FINGER_JOINTS]
        half = state.gripper_width / 2
        joints.position = [float(q) for q in state.joint_positions] + [half, half]
        self.joints.publish(joints)

    def report(self, command: Command, hardware_id: str) -> None:
        """On /diagnostics whenever the reason to hold changes, and with the safety filter's
        counts (what it clamped or rejected, by reason)."""
        if command.reason == self._last_reason:
            return
        self._last_reason = command.reason
        item = DiagnosticStatus(name="onedp robot", hardware_id=hardware_id)
        item.level = DiagnosticStatus.WARN if command.reason else DiagnosticStatus.OK
        item.message = f"holding: {command.reason}" if command.reason else "streaming"
        counts = {"refused_chunks": self.refused_chunks, **self.loop.safety.counts}
        item.values = [KeyValue(key=key, value=str(value)) for key, value in counts.items()]
        array = DiagnosticArray(status=[item])
        array.header.stamp = to_stamp(command.stamp)
        self.diagnostics.publish(array)

    def publish_command(self, command: Command) -> None:
        """Every tick: one point while streaming, none while holding (the reason goes to
        /diagnostics). The watchdog times the command stream by these."""
        message = JointTrajectory()
        message.header.stamp = to_stamp(command.stamp)
        message.header.frame_id = "base"
        message.joint_names = list(ACTION_NAMES)
        if command.action is not None:
            message.points.append(
                JointTrajectoryPoint(positions=[float(v) for v in np.asarray(command.action)])
            )
        self.commands.publish(message)
