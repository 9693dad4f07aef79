"""Sim node: the MuJoCo pnp-milk cell behind the camera and robot nodes' topics.

A lifecycle node. Configure checks the task; activate starts a deadline-paced loop at the
control rate which builds the world (in its own thread: MuJoCo's GL context belongs to it) and
then, each tick: publishes both cameras (Image + CameraInfo, sensor-data QoS) and the measured
pose and joint states of the world as it is now, stamped with the wall clock; takes the command
for now (the same CommandLoop as the robot node: chunk target, or hold); and steps the physics
one control period. World time keeps pace with the wall clock, so the policy's latency costs
what it would cost on the real cell: a tick the loop skipped (a missed deadline on a loaded
machine) passes in the world too, toward the last target, or the frames' and states' stamps
would fall a period behind the wall clock for each miss and the watchdog would hold for good.
The world clock is anchored to the wall clock at the first tick of each episode and of each
activation (time stands still in the world while the node is inactive). Finished episodes
are reported as JSON on /sim/episode; after `episodes` of them the loop stops. The carton's
true pose goes out on /sim/carton_pose each tick: ground truth that no real cell has, for
scripted operators and checks, never for a policy.
"""

from __future__ import annotations

import json
import math
import time

from geometry_msgs.msg import PoseStamped
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from onedp_control.robots.sim_robot import SimRobot
from onedp_control.ros.common import (
    RELIABLE_QOS,
    SENSOR_QOS,
    FaultSwitches,
    declare_params,
    image_message,
    pose_message,
    spin_node,
    to_stamp,
)
from onedp_control.ros.nodes_shared import RobotInterfaces
from onedp_control.runtime.chunks import ChunkScheduler
from onedp_control.runtime.command_loop import CommandLoop
from onedp_control.runtime.config import RobotParams, SimParams
from onedp_control.runtime.graph import (
    CAMERA_INFO_TOPIC,
    CAMERAS,
    CARTON_POSE_TOPIC,
    EPISODE_TOPIC,
    IMAGE_TOPIC,
)
from onedp_control.runtime.rate_loop import DeadlineLoop
from onedp_control.runtime.safety import SafetyFilter
from onedp_control.sim.tasks import TASKS
from onedp_control.sim.world import PnpMilkWorld


def camera_info(world: PnpMilkWorld, camera: str, stamp: float) -> CameraInfo:
    """Pinhole intrinsics of a MuJoCo camera (vertical field of view, square pixels)."""
    height, width = world.task.image_height, world.task.image_width
    fovy = math.radians(float(world.model.camera(camera).fovy[0]))
    focal = height / 2 / math.tan(fovy / 2)
    info = CameraInfo()
    info.header.stamp, info.header.frame_id = to_stamp(stamp), f"{camera}_camera"
    info.height, info.width = height, width
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = [focal, 0.0, width / 2, 0.0, focal, height / 2, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [focal, 0.0, width / 2, 0.0, 0.0, focal, height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


class SimNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__("sim")
        self.params, self.shared = declare_params(self, SimParams)
        self.period = self.shared.control_period_s
        self.declare_parameter("watchdog_timeout_ms", RobotParams.watchdog_timeout_ms)
        self.watchdog_timeout_s = self.get_parameter("watchdog_timeout_ms").value / 1e3
        self.world: PnpMilkWorld | None = None
        self.rate_loop: DeadlineLoop | None = None
        self.faults = FaultSwitches(self, self.shared.fault_injection)
        self._fault_generation = 0
        self._anchor_pending = True  # anchor the world clock at the next tick
        self._missed_seen = 0  # the loop's missed deadlines the world has stepped through

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.params.task not in TASKS:
            self.get_logger().error(
                f"task '{self.params.task}' unknown (known: {', '.join(sorted(TASKS))})"
            )
            return TransitionCallbackReturn.FAILURE
        if abs(TASKS[self.params.task].control_period_s - self.period) > 1e-9:
            self.get_logger().error(
                f"control_period_s {self.period} differs from the task's "
                f"{TASKS[self.params.task].control_period_s}"
            )
            return TransitionCallbackReturn.FAILURE
        self.scheduler = ChunkScheduler()
        self.images = {
            c: self.create_publisher(Image, IMAGE_TOPIC.format(camera=c), SENSOR_QOS)
            for c in CAMERAS
        }
        self.infos = {
            c: self.create_publisher(CameraInfo, CAMERA_INFO_TOPIC.format(camera=c), SENSOR_QOS)
            for c in CAMERAS
        }
        self.episodes = self.create_publisher(String, EPISODE_TOPIC, RELIABLE_QOS)
        self.carton = self.create_publisher(PoseStamped, CARTON_POSE_TOPIC, SENSOR_QOS)
        self.episode = 0
        return TransitionCallbackReturn.SUCCESS

    def _open_world(self) -> None:
        """In the loop's thread: MuJoCo's offscreen GL context belongs to the thread that made
        it, and every render happens in this one."""
        self.world = PnpMilkWorld(self.params.task, render=self.params.publish_cameras)
        self.robot = SimRobot(self.world)
        self.loop = CommandLoop(
            self.robot,
            self.scheduler,
            SafetyFilter(self.shared.safety_limits(), self.period),
            self.watchdog_timeout_s,
        )
        self.interfaces = RobotInterfaces(self, self.loop)
        self._start_episode(time.time())

    def _start_episode(self, now: float) -> None:
        self.robot.reset(self.params.seed + self.episode, now)
        self.loop.scheduler.clear(not_before=now)
        self.streamed_steps = 0
        self._anchor_pending = True

    def _keep_pace(self) -> None:
        """Brings the world clock to this tick's nominal time: the first tick of an episode or
        activation anchors it there (not at its start, which may be late by up to a period and
        would stamp every later frame in the future); later, each deadline the loop skipped
        since the last tick is a period the world steps through (the loop counts them before it
        runs this tick)."""
        missed = self.rate_loop.missed_deadlines
        if self._anchor_pending:
            self.robot.anchor(self.rate_loop.tick_deadline)
            self._anchor_pending = False
        else:
            self.robot.advance(missed - self._missed_seen)
        self._missed_seen = missed

    def _publish_images(self) -> None:
        if not self.params.publish_cameras:
            return
        stamp = self.robot.time_offset + self.world.time
        for camera in CAMERAS:
            rgb = self.world.render(camera)
            self.images[camera].publish(image_message(rgb, stamp, f"{camera}_camera"))
            self.infos[camera].publish(camera_info(self.world, camera, stamp))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.rate_loop = DeadlineLoop(
            self.period, self._tick, name="sim", clock=time.time, on_error=self._on_loop_error
        )
        self._anchor_pending = True
        self.rate_loop.start()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def _tick(self, now: float) -> None:
        if self.episode >= self.params.episodes:
            return
        if self.world is None:
            self._open_world()
            return
        # The world as it is now (world time keeps pace with this loop's wall-clock ticks), then
        # the command for now, then the physics up to the next tick.
        self._keep_pace()
        self._publish_images()
        self._publish_carton(now)
        self._apply_faults()
        command = self.loop.tick(now, self.interfaces.read_state())
        self.streamed_steps += command.streaming
        self.interfaces.publish_command(command)
        self.interfaces.report(command, "sim")
        self.robot.advance()
        world = self.world
        failure = world.failure()
        limit = self.params.time_limit_s or world.task.time_limit_s
        limit_reached = world.time >= limit - 1e-9
        if world.is_success() or failure is not None or limit_reached:
            self._report(failure or ("timeout" if not world.is_success() else None))
            self.episode += 1
            if self.episode < self.params.episodes:
                self._start_episode(time.time())

    def _publish_carton(self, now: float) -> None:
        self.carton.publish(pose_message(*self.world.carton_pose(), now))

    def _apply_faults(self) -> None:
        """In the loop's thread, which owns the world."""
        self.robot.set_connected(not self.faults.get("disconnect", False))
        if self.faults.generation != self._fault_generation:
            self._fault_generation = self.faults.generation
            if "robot_error" in self.faults.active:  # stays until /robot/recover, as a reflex
                self.robot.raise_error(str(self.faults.get("robot_error")))

    def _on_loop_error(self, error: Exception) -> None:
        self.get_logger().fatal(f"sim loop stopped: {type(error).__name__}: {error}")

    def _report(self, failure: str | None) -> None:
        world = self.world
        result = {
            "episode": self.episode,
            "seed": self.params.seed + self.episode,
            "success": failure is None,
            "completion_time_s": round(world.time, 3) if failure is None else None,
            "failure": failure,
            "pushes": world.pusher.done if world.pusher is not None else 0,
            "streamed_steps": self.streamed_steps,
            "rate_loop": self.rate_loop.stats() if self.rate_loop else {},
            "last": self.episode + 1 >= self.params.episodes,
        }
        self.episodes.publish(String(data=json.dumps(result)))
        self.get_logger().info(f"episode {self.episode}: {result}")

    def _stop_loop(self) -> None:
        if self.rate_loop is not None:
            self.rate_loop.stop(timeout=2.0)
            self.rate_loop = None

    def close(self) -> None:
        self._stop_loop()
        if self.world is not None:
            self.world.close()
            self.world = None


def main() -> int:
    return spin_node(SimNode)


if __name__ == "__main__":
    raise SystemExit(main())
