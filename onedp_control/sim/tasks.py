"""The simulated tasks: where things are, how long an episode may last, how the carton is moved.

`pnp_milk` stands in for the OneDP paper's real pnp-milk task (seed 003, section 4.2 and
appendix C): a milk carton placed at random in a 23 cm x 20 cm area is put into a 13 cm square
bin at a fixed place. `pnp_milk_move` is the same, but a scripted "person" pushes the carton away
along a path when the gripper comes close, once or twice (seed 003, figure 9).

Frames: the robot base is the origin, x points away from the robot, z up, the table top is z=0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onedp_control.errors import ConfigError


@dataclass(frozen=True)
class CartonSpec:
    half_size: tuple[float, float, float] = (0.028, 0.028, 0.055)  # a small 5.6 x 5.6 x 11 cm box
    mass_kg: float = 0.12
    area_center: tuple[float, float] = (0.52, 0.14)
    # The paper's area is 23 cm "high" (away from the robot) by 20 cm wide.
    area_size: tuple[float, float] = (0.23, 0.20)
    yaw_range: tuple[float, float] = (-0.6, 0.6)  # radians about z


@dataclass(frozen=True)
class BinSpec:
    center: tuple[float, float] = (0.50, -0.22)
    outer_size: float = 0.13  # square, as the paper's target box
    wall_height: float = 0.07
    wall_thickness: float = 0.008


@dataclass(frozen=True)
class PushSpec:
    """A person moving the carton away when the gripper comes close (pnp_milk_move)."""

    pushes: tuple[int, int] = (1, 2)  # how many times per episode, drawn uniformly
    distance_m: tuple[float, float] = (0.08, 0.14)
    duration_s: float = 0.8
    # The gripper counts as "close" when its centre is this near the carton horizontally ...
    trigger_radius_m: float = 0.06
    # ... and no higher than this above the carton's top (it is coming down to grasp).
    trigger_height_m: float = 0.12
    # The carton is never pushed outside this region (x range, y range): on the table, within
    # reach, clear of the bin.
    region_x: tuple[float, float] = (0.38, 0.68)
    region_y: tuple[float, float] = (0.00, 0.32)
    min_interval_s: float = 1.0


@dataclass(frozen=True)
class TaskSpec:
    name: str
    carton: CartonSpec = field(default_factory=CartonSpec)
    bin: BinSpec = field(default_factory=BinSpec)
    push: PushSpec | None = None
    time_limit_s: float = 25.0
    control_rate_hz: float = 20.0
    image_height: int = 120
    image_width: int = 160

    @property
    def control_period_s(self) -> float:
        return 1.0 / self.control_rate_hz


TASKS: dict[str, TaskSpec] = {
    "pnp_milk": TaskSpec(name="pnp_milk"),
    "pnp_milk_move": TaskSpec(name="pnp_milk_move", push=PushSpec(), time_limit_s=35.0),
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise ConfigError(f"unknown task '{name}' (known tasks: {known})") from None
