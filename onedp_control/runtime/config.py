"""The runtime configuration: one ROS 2 parameters file per task (`config/<task>.yaml`).

The file is a standard ROS 2 params file, so `ros2 launch` and `--ros-args --params-file` read
it as-is; `load_runtime_config` reads the same file into dataclasses for the hardware-free core
and the pip-only runner, strictly (unknown node, unknown key, wrong type, out-of-range limit:
an error naming the file and the field). `/**` holds what every node shares.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from onedp_control.config import from_dict
from onedp_control.errors import ConfigError
from onedp_control.runtime.safety import SafetyLimits
from onedp_control.runtime.watchdog import LatencyLimits


@dataclass(frozen=True)
class SharedParams(SafetyLimits):
    """What every node shares (`/**`): the control period, and the safety limits the robot
    and sim nodes enforce (runtime/safety.py)."""

    control_period_s: float = 0.05
    fault_injection: bool = False  # listen on /onedp/fault (the fault-injection suite only)

    def safety_limits(self) -> SafetyLimits:
        return SafetyLimits(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(SafetyLimits)}
        )


@dataclass(frozen=True)
class CameraParams:
    # realsense: the cameras by serial; software: two SDK software devices fed a moving test
    # pattern (no camera needed: tests, and running the graph on a desk).
    source: str = "realsense"
    front_serial: str = ""  # the D415; empty: must be given at launch
    wrist_serial: str = ""  # the D435
    width: int = 640  # native colour profile ...
    height: int = 480
    fps: int = 30
    image_height: int = 120  # ... resized to this
    image_width: int = 160
    # `onedp calibrate intrinsics` output, <calibration_dir>/<serial>.yaml per camera; empty:
    # camera_info carries the image size only.
    calibration_dir: str = ""


@dataclass(frozen=True)
class PolicyParams:
    engine: str = "models/pnp_milk/onedp_s.pt"  # .pt (torch), .onnx (ONNX Runtime), .engine
    backend: str = ""  # empty: from the engine file's type
    threads: int = 1
    seed: int = 0
    sync_window_ms: float = 30.0  # frames of the two cameras closer than this are one frame


@dataclass(frozen=True)
class RobotParams:
    robot_host: str = "172.16.0.2"
    dynamics_factor: float = 0.1
    # franky refuses a kernel without realtime scheduling; false only for franky-sim.
    enforce_realtime: bool = True
    # Without a watchdog message for this long, the robot holds: a dead watchdog is a fault.
    watchdog_timeout_ms: float = 200.0


@dataclass(frozen=True)
class WatchdogParams(LatencyLimits):
    rate_hz: float = 100.0


@dataclass(frozen=True)
class SimParams:
    task: str = "pnp_milk"
    seed: int = 100_000
    episodes: int = 1  # then the sim node reports and stops stepping
    time_limit_s: float = 0.0  # an episode's limit; 0: the task's
    # False: the sim provides only the robot, and a camera node the images (fault tests).
    publish_cameras: bool = True


@dataclass(frozen=True)
class RuntimeConfig:
    shared: SharedParams = field(default_factory=SharedParams)
    camera: CameraParams = field(default_factory=CameraParams)
    policy: PolicyParams = field(default_factory=PolicyParams)
    robot: RobotParams = field(default_factory=RobotParams)
    watchdog: WatchdogParams = field(default_factory=WatchdogParams)
    sim: SimParams = field(default_factory=SimParams)

    def validate(self, where: str) -> None:
        if not 0.001 <= self.shared.control_period_s <= 1.0:
            raise ConfigError(f"{where}: control_period_s must be in [0.001, 1] s")
        self.shared.safety_limits().validate(where)
        self.watchdog.validate(f"{where}: watchdog")
        if not 1 <= self.watchdog.rate_hz <= 1000:
            raise ConfigError(f"{where}: watchdog.rate_hz must be in [1, 1000]")
        if self.camera.source not in ("realsense", "software"):
            raise ConfigError(f"{where}: camera.source must be realsense or software")
        if self.policy.threads < 1:
            raise ConfigError(f"{where}: policy.threads must be >= 1")
        if self.sim.episodes < 1:
            raise ConfigError(f"{where}: sim.episodes must be >= 1")


# Params-file node name -> RuntimeConfig field.
SECTIONS = {
    "/**": "shared",
    **{f.name: f.name for f in dataclasses.fields(RuntimeConfig) if f.name != "shared"},
}


def load_runtime_config(path: Path) -> RuntimeConfig:
    if not path.is_file():
        raise ConfigError(f"{path}: no such runtime config file")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected node names at the top level")
    sections = {}
    for node, body in document.items():
        if node not in SECTIONS:
            raise ConfigError(f"{path}: unknown node '{node}' (known: {', '.join(SECTIONS)})")
        if not isinstance(body, dict) or set(body) != {"ros__parameters"}:
            raise ConfigError(f"{path}: {node}: expected exactly one key, 'ros__parameters'")
        section = SECTIONS[node]
        params_class = typing.get_type_hints(RuntimeConfig)[section]
        # Errors read "<file>: <node>.<key>: ...".
        where = f"{path}: {node}"
        sections[section] = from_dict(params_class, body["ros__parameters"] or {}, where)
    config = RuntimeConfig(**sections)
    config.validate(str(path))
    return config


def node_parameters(config: RuntimeConfig, node: str) -> dict:
    """A node's parameters as ROS sees them: the shared ones and its own section."""
    own = dataclasses.asdict(getattr(config, node)) if node in SECTIONS else {}
    return {**dataclasses.asdict(config.shared), **own}
