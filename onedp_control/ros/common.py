"""What every node shares: parameters from the core dataclasses, message conversions, QoS,
time stamps, and a main() that shuts down cleanly on SIGINT."""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import typing
from collections.abc import Callable

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import Image
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from onedp_control.config import from_dict
from onedp_control.errors import ConfigError
from onedp_control.geometry import matrix_from_quat, quat_from_matrix
from onedp_control.runtime.chunks import ActionChunk
from onedp_control.runtime.config import SharedParams
from onedp_control.runtime.graph import ACTION_NAMES

SENSOR_QOS = qos_profile_sensor_data  # best effort, shallow: a late frame is a useless frame
RELIABLE_QOS = QoSProfile(
    depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST
)
# The hold flag: reliable, and the last value is delivered to late joiners.
LATCHED_QOS = QoSProfile(
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    history=HistoryPolicy.KEEP_LAST,
)


def _read(node: Node, cls: type):
    values = {}
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        try:
            node.declare_parameter(item.name, item.default)
        except Exception as error:  # rclpy's parameter exceptions share no useful base
            raise ConfigError(f"node {node.get_name()}: parameter {item.name}: {error}") from None
        value = node.get_parameter(item.name).value
        if hasattr(value, "tolist"):  # array parameters come back as array.array
            value = value.tolist()
        # A YAML "1" for a float parameter arrives as an int.
        values[item.name] = (
            float(value) if hints[item.name] is float and type(value) is int else value
        )
    return from_dict(cls, values, f"node {node.get_name()}")


def declare_params(node: Node, cls: type) -> tuple:
    """Declares the dataclass's fields and the shared ones as ROS parameters with the
    dataclass defaults, reads them back and builds both dataclasses, validated; a bad value
    raises ConfigError naming the node and the parameter."""
    return _read(node, cls), _read(node, SharedParams)


class FaultSwitches:
    """The faults `onedp faults` has switched on in this node (empty unless the node was started
    with fault_injection: true). Values are whatever the fault takes (a delay, an offset)."""

    def __init__(self, node: Node, enabled: bool) -> None:
        self.active: dict[str, object] = {}
        self.generation = 0  # counts fault messages, so a node can act once per message
        self._name = node.get_name()
        if enabled:
            from std_msgs.msg import String

            from onedp_control.runtime.graph import FAULT_TOPIC

            node.create_subscription(String, FAULT_TOPIC, self._on_message, RELIABLE_QOS)
            node.get_logger().warning("fault injection enabled")

    def _on_message(self, message) -> None:
        import json

        command = json.loads(message.data)
        if command.get("target") != self._name:
            return
        if command.get("clear"):
            self.active = {}
        else:
            self.active = {**self.active, command["fault"]: command.get("value", True)}
        self.generation += 1

    def get(self, fault: str, default=None):
        return self.active.get(fault, default)


def _split(seconds: float) -> tuple[int, int]:
    sec, nanosec = divmod(round(seconds * 1e9), 1_000_000_000)
    return sec, nanosec


def to_stamp(seconds: float) -> Time:
    sec, nanosec = _split(seconds)
    return Time(sec=sec, nanosec=nanosec)


def from_stamp(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def timing_status(
    source: str, stamp: float, observation_age_ms: float, inference_ms: float, error: str = ""
) -> DiagnosticStatus:
    """What the command source (the policy's engine, or the teleop) reports on /policy/timing
    for each chunk: the observation it was computed from, that observation's age when the
    computation began, and how long it took; ERROR with the reason when it refused to output."""
    status = DiagnosticStatus(name="policy", hardware_id=source)
    status.level = DiagnosticStatus.ERROR if error else DiagnosticStatus.OK
    status.message = error or "ok"
    status.values = [
        KeyValue(key="observation_stamp", value=f"{stamp:.6f}"),
        KeyValue(key="observation_age_ms", value=f"{observation_age_ms:.3f}"),
        KeyValue(key="inference_ms", value=f"{inference_ms:.3f}"),
    ]
    return status


def pose_message(
    position: np.ndarray, rotation: np.ndarray, stamp: float, frame_id: str = "base"
) -> PoseStamped:
    """A pose (position (3,), rotation matrix (3, 3)) as a stamped message."""
    message = PoseStamped()
    message.header.stamp, message.header.frame_id = to_stamp(stamp), frame_id
    p, o = message.pose.position, message.pose.orientation
    p.x, p.y, p.z = (float(v) for v in position)
    o.w, o.x, o.y, o.z = (float(v) for v in quat_from_matrix(np.asarray(rotation)))
    return message


def pose_from_message(message: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,), rotation matrix (3, 3)) of a stamped pose."""
    p, q = message.pose.position, message.pose.orientation
    return np.array([p.x, p.y, p.z]), matrix_from_quat(np.array([q.w, q.x, q.y, q.z]))


def image_message(rgb: np.ndarray, stamp: float, frame_id: str) -> Image:
    """An rgb8 Image without cv_bridge (not on PyPI)."""
    message = Image()
    message.header.stamp = to_stamp(stamp)
    message.header.frame_id = frame_id
    message.height, message.width = rgb.shape[:2]
    message.encoding = "rgb8"
    message.step = rgb.shape[1] * 3
    message.data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return message


def image_array(message: Image) -> np.ndarray:
    if message.encoding != "rgb8":
        raise ValueError(f"image encoding '{message.encoding}', expected rgb8")
    data = np.frombuffer(bytes(message.data), dtype=np.uint8)
    return data.reshape(message.height, message.step // 3, 3)[:, : message.width]


def chunk_message(chunk: ActionChunk, frame_id: str = "base") -> JointTrajectory:
    """A chunk as a standard trajectory: header stamp = observation time, one point per step
    with its time from that stamp, joint names = the action layout."""
    message = JointTrajectory()
    message.header.stamp = to_stamp(chunk.stamp)
    message.header.frame_id = frame_id
    message.joint_names = list(ACTION_NAMES)
    for index, action in enumerate(chunk.actions):
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in action]
        sec, nanosec = _split(index * chunk.period)
        point.time_from_start.sec, point.time_from_start.nanosec = sec, nanosec
        message.points.append(point)
    return message


def chunk_from_message(message: JointTrajectory) -> ActionChunk:
    """The chunk in a trajectory message; ValueError when it is not one (layout, timing)."""
    if tuple(message.joint_names) != ACTION_NAMES:
        raise ValueError(f"joint names {list(message.joint_names)}, expected {ACTION_NAMES}")
    if len(message.points) < 2:
        raise ValueError("a chunk needs at least two points")
    times = np.array([from_stamp(p.time_from_start) for p in message.points])
    periods = np.diff(times)
    if not np.allclose(periods, periods[0], atol=1e-6) or periods[0] <= 0 or times[0] != 0:
        raise ValueError("chunk points must start at 0 and be evenly spaced")
    actions = np.array([list(p.positions) for p in message.points], dtype=np.float64)
    return ActionChunk(from_stamp(message.header.stamp), float(periods[0]), actions)


def spin_node(factory: Callable[[], Node]) -> int:
    """Runs a node until SIGINT or SIGTERM, then shuts down in order: the node first (its own
    threads stop publishing), then the executor, then the ROS context. rclpy's own signal
    handler would invalidate the context while those threads still publish. Exit status 2 with
    one line on a config error."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    rclpy.init(args=sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    # One thread for the callbacks, which are all short (the work runs in each node's own
    # threads). rclpy's MultiThreadedExecutor busy-loops while a callback runs, and the GIL it
    # holds starved the sim's 20 Hz loop into hundreds of missed deadlines.
    executor = SingleThreadedExecutor()
    spinner = threading.Thread(target=executor.spin, name="executor", daemon=True)
    try:
        node = factory()
        executor.add_node(node)
        spinner.start()
        while not stop.wait(0.2):
            if not spinner.is_alive():
                break
    except ConfigError as error:
        print(f"{sys.argv[0]}: error: {error}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.close()
        executor.shutdown()
        if spinner.is_alive():
            spinner.join(timeout=2.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
