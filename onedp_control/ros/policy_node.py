"""Policy node: the last synchronized frames of both cameras and the robot state in, a 16-step
action chunk out (trajectory_msgs/JointTrajectory: header stamp = the newest observation's
time, one point per step with its time from that stamp).

Inference runs in its own thread, paced like diffusion_policy's real-robot loop: a new chunk
is computed from the newest observation once `action_steps` steps of the previous one have
passed (the robot executes the chunk meanwhile, and skips the steps that inference ate). It
keeps computing while the watchdog holds the robot, so that the watchdog can see it healthy
again; the robot node executes no chunk while holding. Each chunk's observation age and
inference time go out on /policy/timing for the watchdog.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from onedp_control.engines.base import EngineInputError
from onedp_control.geometry import matrix_from_quat, rot6d_from_matrix
from onedp_control.policies.learned import load_policy
from onedp_control.resources import resolve_model
from onedp_control.ros.common import (
    RELIABLE_QOS,
    SENSOR_QOS,
    FaultSwitches,
    chunk_message,
    declare_params,
    from_stamp,
    image_array,
    spin_node,
    timing_status,
)
from onedp_control.runtime.chunks import ActionChunk
from onedp_control.runtime.config import PolicyParams
from onedp_control.runtime.graph import (
    CHUNK_TOPIC,
    EE_POSE_TOPIC,
    IMAGE_TOPIC,
    JOINT_STATES_TOPIC,
    POLICY_TIMING_TOPIC,
)
from onedp_control.runtime.observations import ObservationAssembler, RobotSample

FINGERS = ("panda_finger_joint1", "panda_finger_joint2")


def gripper_width(message: JointState) -> float | None:
    positions = dict(zip(message.name, message.position, strict=False))
    if not all(finger in positions for finger in FINGERS):
        return None
    return float(sum(positions[finger] for finger in FINGERS))


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        self.params, shared = declare_params(self, PolicyParams)
        self.period = shared.control_period_s
        self.faults = FaultSwitches(self, shared.fault_injection)
        self.policy = load_policy(
            resolve_model(self.params.engine),
            seed=self.params.seed,
            backend=self.params.backend or None,
            threads=self.params.threads,
        )
        self.policy.engine.warmup()
        self.assembler = ObservationAssembler(
            self.policy.obs_horizon, self.period, self.params.sync_window_ms / 1e3
        )
        self._width: float | None = None
        self._new_frame = threading.Condition()
        self._stop = threading.Event()
        self.chunks = self.create_publisher(JointTrajectory, CHUNK_TOPIC, RELIABLE_QOS)
        self.timing = self.create_publisher(DiagnosticStatus, POLICY_TIMING_TOPIC, RELIABLE_QOS)
        for camera in ("front", "wrist"):
            self.create_subscription(
                Image,
                IMAGE_TOPIC.format(camera=camera),
                lambda message, camera=camera: self._on_image(camera, message),
                SENSOR_QOS,
            )
        self.create_subscription(JointState, JOINT_STATES_TOPIC, self._on_joints, SENSOR_QOS)
        self.create_subscription(PoseStamped, EE_POSE_TOPIC, self._on_pose, SENSOR_QOS)
        self._worker = threading.Thread(target=self._run, name="inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"engine {self.params.engine} ({self.policy.engine.backend}, "
            f"{self.policy.sampler.label}); replanning every {self.policy.action_steps} steps"
        )

    def _on_image(self, camera: str, message: Image) -> None:
        ring = self.assembler.front if camera == "front" else self.assembler.wrist
        ring.push(from_stamp(message.header.stamp), image_array(message))
        self._wake()

    def _wake(self) -> None:
        # On every part of an observation, not only on front frames: the wrist frame and the
        # state of a tick arrive after its front frame, and an observation found incomplete
        # must be tried again when they do, not a period later with the next front frame (whose
        # wrist frame is again not there yet: under load that race held chunks back > 1 s).
        with self._new_frame:
            self._new_frame.notify()

    def _on_joints(self, message: JointState) -> None:
        self._width = gripper_width(message)

    def _on_pose(self, message: PoseStamped) -> None:
        if self._width is None:
            return
        p, q = message.pose.position, message.pose.orientation
        sample = RobotSample(
            ee_pos=np.array([p.x, p.y, p.z]),
            ee_rot6d=rot6d_from_matrix(matrix_from_quat(np.array([q.w, q.x, q.y, q.z]))),
            gripper_width=self._width,
        )
        self.assembler.state.push(from_stamp(message.header.stamp), sample)
        self._wake()

    def _run(self) -> None:
        last_stamp = -np.inf
        while not self._stop.is_set():
            with self._new_frame:
                self._new_frame.wait(timeout=self.period)
            newest = self.assembler.newest_stamp()
            replan_at = last_stamp + self.policy.action_steps * self.period - self.period / 2
            if newest is None or newest < replan_at:
                continue
            history = self.assembler.history()
            if history is None:
                continue
            started = time.time()
            try:
                actions = self._infer(history)
            except EngineInputError as error:  # no chunk; the watchdog holds the robot
                self.get_logger().error(f"inference refused: {error}")
                self._publish_timing(history[-1].front_stamp, 0.0, 0.0, error=str(error))
                continue
            inference_ms = (time.time() - started) * 1e3
            stamp = history[-1].front_stamp
            last_stamp = stamp
            self.chunks.publish(chunk_message(ActionChunk(stamp, self.period, actions)))
            self._publish_timing(stamp, (started - stamp) * 1e3, inference_ms)

    def _infer(self, history) -> np.ndarray:
        """The policy's chunk; with fault injection on, the faults `onedp faults` switched on:
        a slow engine, an engine that returns NaN (caught by the engine's output check), or
        targets moved by an offset (caught by the robot's safety filter)."""
        faults = self.faults
        if faults.get("nan_output"):
            engine = self.policy.engine
            original = engine._generate
            engine._generate = lambda *args: np.full_like(original(*args), np.nan)
            try:
                return self.policy.predict_chunk(history)
            finally:
                engine._generate = original
        actions = self.policy.predict_chunk(history)
        time.sleep(float(faults.get("delay_s", 0.0)))
        actions[:, :3] += np.asarray(faults.get("offset", [0.0, 0.0, 0.0]), dtype=np.float64)
        return actions

    def _publish_timing(
        self, stamp: float, observation_age_ms: float, inference_ms: float, error: str = ""
    ) -> None:
        self.timing.publish(
            timing_status(self.params.engine, stamp, observation_age_ms, inference_ms, error)
        )

    def close(self) -> None:
        self._stop.set()
        with self._new_frame:
            self._new_frame.notify()
        self._worker.join(timeout=2.0)
        self.policy.engine.close()


def main() -> int:
    return spin_node(PolicyNode)


if __name__ == "__main__":
    raise SystemExit(main())
