"""Robot node (franky): streams end-effector targets from the current chunk at the control rate.

A lifecycle node: configure connects to the robot (an unreachable host fails the transition
with one line naming it, and nothing moves), activate starts the deadline-paced command loop,
deactivate holds and stops it, cleanup disconnects. Each tick reads the measured state
(published as the end-effector pose and joint states), then commands the chunk's target for now
or holds (runtime/command_loop.py says when). A robot error makes it hold until
`/robot/recover` (std_srvs/Trigger) clears it.
"""

from __future__ import annotations

import time

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from onedp_control.robots.base import Robot, RobotError
from onedp_control.ros.common import declare_params, spin_node
from onedp_control.ros.nodes_shared import RobotInterfaces
from onedp_control.runtime.chunks import ChunkScheduler
from onedp_control.runtime.command_loop import CommandLoop
from onedp_control.runtime.config import RobotParams
from onedp_control.runtime.rate_loop import DeadlineLoop
from onedp_control.runtime.safety import SafetyFilter


def make_robot(params: RobotParams) -> Robot:
    from onedp_control.robots.franky_robot import FrankyRobot

    return FrankyRobot(
        params.robot_host,
        dynamics_factor=params.dynamics_factor,
        enforce_realtime=params.enforce_realtime,
    )


class RobotNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__("robot")
        self.params, self.shared = declare_params(self, RobotParams)
        self.period = self.shared.control_period_s
        self.robot: Robot | None = None
        self.rate_loop: DeadlineLoop | None = None

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        robot = make_robot(self.params)
        try:
            robot.connect()
        except RobotError as error:
            self.get_logger().error(str(error))
            return TransitionCallbackReturn.FAILURE
        self.robot = robot
        self.loop = CommandLoop(
            robot,
            ChunkScheduler(),
            SafetyFilter(self.shared.safety_limits(), self.period),
            self.params.watchdog_timeout_ms / 1e3,
        )
        self.interfaces = RobotInterfaces(self, self.loop)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.rate_loop = DeadlineLoop(
            self.period, self._tick, name="robot", clock=time.time, on_error=self._on_loop_error
        )
        self.rate_loop.start()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def _tick(self, now: float) -> None:
        state = self.interfaces.read_state()
        command = self.loop.tick(now, state)
        self.interfaces.publish_command(command)
        self.interfaces.report(command, self.params.robot_host)

    def _on_loop_error(self, error: Exception) -> None:
        """The command stream is dead: hold, and say why (the watchdog sees it stop too)."""
        self.get_logger().fatal(f"command loop stopped: {type(error).__name__}: {error}")
        try:
            self.robot.hold()
        except RobotError as hold_error:
            self.get_logger().fatal(f"hold failed: {hold_error}")

    def _stop(self) -> None:
        if self.rate_loop is not None:
            self.rate_loop.stop(timeout=2.0)
            self.rate_loop = None
        if self.robot is not None:
            try:
                self.robot.hold()
            except RobotError as error:
                self.get_logger().error(f"hold on stop: {error}")

    def close(self) -> None:
        self._stop()
        if self.robot is not None:
            self.robot.disconnect()
            self.robot = None


def main() -> int:
    return spin_node(RobotNode)


if __name__ == "__main__":
    raise SystemExit(main())
