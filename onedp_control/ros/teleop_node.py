"""Teleop node: a teleoperation device's commands in the policy's place, while demonstrations
are recorded (`onedp record`, `pnp_milk.launch.py record:=true`).

Any teleop that publishes an end-effector target (geometry_msgs/PoseStamped on
/teleop/target_pose) and a gripper width (std_msgs/Float64 on /teleop/gripper_width) drives the
robot through this node: at the control rate (a deadline-paced loop) it publishes the newest
command as an action chunk on /policy/action_chunk and its age on /policy/timing, so the robot
(or sim) node executes it through the same safety filter and watchdog as a policy
(runtime/teleop.py). Inference time is reported as 0: there is no model.

Parameters: TeleopParams (runtime/teleop.py) as node parameters, and the shared control period.
"""

from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from std_msgs.msg import Float64
from trajectory_msgs.msg import JointTrajectory

from onedp_control.geometry import rot6d_from_matrix
from onedp_control.ros.common import (
    RELIABLE_QOS,
    chunk_message,
    declare_params,
    pose_from_message,
    spin_node,
    timing_status,
)
from onedp_control.runtime.graph import (
    CHUNK_TOPIC,
    POLICY_TIMING_TOPIC,
    TELEOP_GRIPPER_TOPIC,
    TELEOP_TARGET_TOPIC,
)
from onedp_control.runtime.rate_loop import DeadlineLoop
from onedp_control.runtime.teleop import TeleopCommands, TeleopParams


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("teleop")
        params, shared = declare_params(self, TeleopParams)
        params.validate(f"node {self.get_name()}")
        self.commands = TeleopCommands(params, shared.control_period_s)
        self.chunks = self.create_publisher(JointTrajectory, CHUNK_TOPIC, RELIABLE_QOS)
        self.timing = self.create_publisher(DiagnosticStatus, POLICY_TIMING_TOPIC, RELIABLE_QOS)
        # Reliable, as a teleop node publishes by default (the recorder listens the same way).
        self.create_subscription(PoseStamped, TELEOP_TARGET_TOPIC, self._on_target, RELIABLE_QOS)
        self.create_subscription(Float64, TELEOP_GRIPPER_TOPIC, self._on_width, RELIABLE_QOS)
        # Wall clock: chunk stamps are compared with the other nodes' ROS time.
        self.loop = DeadlineLoop(
            shared.control_period_s,
            self._tick,
            name="teleop",
            clock=time.time,
            on_error=self._on_error,
        )
        self.loop.start()

    def _on_target(self, message: PoseStamped) -> None:
        try:
            position, rotation = pose_from_message(message)
            self.commands.set_pose(position, rot6d_from_matrix(rotation), time.time())
        except ValueError as error:
            self.get_logger().warning(f"{TELEOP_TARGET_TOPIC}: ignored: {error}")

    def _on_width(self, message: Float64) -> None:
        try:
            self.commands.set_gripper_width(message.data)
        except ValueError as error:
            self.get_logger().warning(f"{TELEOP_GRIPPER_TOPIC}: ignored: {error}")

    def _tick(self, now: float) -> None:
        chunk = self.commands.chunk(now)
        if chunk is None:
            return  # nothing fresh to execute: the robot holds when its chunk runs out
        self.chunks.publish(chunk_message(chunk))
        self.timing.publish(timing_status("teleop", chunk.stamp, (now - chunk.stamp) * 1e3, 0.0))

    def _on_error(self, error: BaseException) -> None:
        # No more chunks: the robot runs out of steps and holds; the watchdog reports it.
        self.get_logger().error(f"teleop loop stopped: {error!r}")

    def close(self) -> None:
        self.loop.stop()


def main() -> int:
    return spin_node(TeleopNode)


if __name__ == "__main__":
    raise SystemExit(main())
