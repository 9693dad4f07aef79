"""Recorder node: demonstrations into a dataset while a person teleoperates the robot.

Any teleoperation that publishes an end-effector target (geometry_msgs/PoseStamped on
/teleop/target_pose) and a gripper width (std_msgs/Float64 on /teleop/gripper_width) can be
recorded. At the control rate (a deadline-paced loop, as the robot's command stream) the node
takes the newest synchronized observation (both cameras, /robot/ee_pose, the finger joints of
/robot/joint_states) and the newest command as one step (recording.py). std_srvs/Trigger
services: /recorder/start opens an episode, /recorder/stop saves it into the dataset and answers
once it is on the disk, /recorder/discard drops it. An episode is written only when it is saved,
so a crash loses at most the open one.

Parameters: RecorderParams (recording.py) as node parameters, and the shared control period.
"""

from __future__ import annotations

import time
from pathlib import Path

from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64
from std_srvs.srv import Trigger

from onedp_control.dataset import DatasetError
from onedp_control.recording import (
    EpisodeStore,
    RecorderParams,
    RecordingError,
    StepSampler,
    TeleopRecorder,
)
from onedp_control.ros.common import RELIABLE_QOS, SENSOR_QOS, declare_params, spin_node
from onedp_control.runtime.graph import (
    CAMERAS,
    EE_POSE_TOPIC,
    IMAGE_TOPIC,
    JOINT_STATES_TOPIC,
    RECORDER_DISCARD_SERVICE,
    RECORDER_START_SERVICE,
    RECORDER_STOP_SERVICE,
    TELEOP_GRIPPER_TOPIC,
    TELEOP_TARGET_TOPIC,
)
from onedp_control.runtime.rate_loop import DeadlineLoop

SOURCE = "onedp recorder (teleoperation)"


class RecorderNode(Node):
    def __init__(self) -> None:
        super().__init__("recorder")
        params, shared = declare_params(self, RecorderParams)
        params.validate(f"node {self.get_name()}")
        period = shared.control_period_s
        image_size = (params.image_height, params.image_width)
        store = EpisodeStore(
            Path(params.dataset),
            attrs={"task": params.task, "control_rate_hz": 1.0 / period, "source": SOURCE},
            image_size=image_size,
        )
        sampler = StepSampler(
            period, params.sync_window_ms / 1e3, params.max_frame_age_ms / 1e3, image_size
        )
        self.recorder = TeleopRecorder(sampler, store)
        for camera in CAMERAS:
            self.create_subscription(
                Image,
                IMAGE_TOPIC.format(camera=camera),
                lambda message, camera=camera: self._on_image(camera, message),
                SENSOR_QOS,
            )
        self.create_subscription(
            JointState, JOINT_STATES_TOPIC, sampler.on_joint_states, SENSOR_QOS
        )
        self.create_subscription(PoseStamped, EE_POSE_TOPIC, sampler.on_ee_pose, SENSOR_QOS)
        # Reliable, as a teleop node publishes by default: a gripper command sent once on a
        # button press must not be lost.
        self.create_subscription(
            PoseStamped, TELEOP_TARGET_TOPIC, sampler.on_target_pose, RELIABLE_QOS
        )
        self.create_subscription(
            Float64, TELEOP_GRIPPER_TOPIC, sampler.on_gripper_width, RELIABLE_QOS
        )
        # Requests one at a time (a start waits for the save before it), in a group of their own
        # so that a save does not hold up the subscriptions.
        requests = MutuallyExclusiveCallbackGroup()
        for name, action in (
            (RECORDER_START_SERVICE, self.recorder.start),
            (RECORDER_STOP_SERVICE, self.recorder.stop),
            (RECORDER_DISCARD_SERVICE, self.recorder.discard),
        ):
            self.create_service(
                Trigger,
                name,
                lambda request, response, action=action: self._serve(action, response),
                callback_group=requests,
            )
        self.rate_loop = DeadlineLoop(
            period, self.recorder.tick, name="recorder", clock=time.time, on_error=self._on_error
        )
        self.rate_loop.start()
        self.get_logger().info(
            f"dataset {store.path} ({store.episodes} episodes); "
            f"{RECORDER_START_SERVICE} to record an episode"
        )

    def _on_image(self, camera: str, message: Image) -> None:
        try:
            self.recorder.sampler.on_image(camera, message, time.time())
        except ValueError as error:
            self.get_logger().error(f"{camera} camera: {error}", throttle_duration_sec=5.0)

    def _serve(self, action, response: Trigger.Response) -> Trigger.Response:
        try:
            response.message = action()
            response.success = True
            self.get_logger().info(response.message)
        except (RecordingError, DatasetError, OSError) as error:
            response.success, response.message = False, str(error)
            self.get_logger().error(response.message)
        return response

    def _on_error(self, error: Exception) -> None:
        self.get_logger().fatal(f"recording loop stopped: {type(error).__name__}: {error}")

    def close(self) -> None:
        self.rate_loop.stop(timeout=2.0)
        dropped = self.recorder.close()
        if dropped:
            self.get_logger().warning(f"shut down while recording: {dropped} steps not saved")


def main() -> int:
    return spin_node(RecorderNode)


if __name__ == "__main__":
    raise SystemExit(main())
