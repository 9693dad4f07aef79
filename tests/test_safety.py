"""The safety filter: whatever the policy produces, what reaches the robot stays in the
workspace, in the orientation cone and within the per-step jump limits (property tests), and
every clamp or rejection is named."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onedp_control.errors import ConfigError
from onedp_control.geometry import matrix_from_rot6d, rot6d_from_matrix, rotvec_from_matrix
from onedp_control.runtime.safety import SafetyFilter, SafetyLimits, cone_angle

LIMITS = SafetyLimits()
PERIOD = 0.05
DOWN = np.diag([1.0, -1.0, -1.0])  # tool z axis pointing down
HOME = np.array([0.31, 0.0, 0.49])


def target(position, rotation=DOWN, gripper=0.08) -> np.ndarray:
    return np.concatenate([position, rot6d_from_matrix(rotation), [gripper]])


def fresh() -> SafetyFilter:
    safety = SafetyFilter(LIMITS, PERIOD)
    safety.reset(HOME, DOWN)
    return safety


finite = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False)
anything = st.one_of(finite, st.just(float("nan")), st.just(float("inf")), st.just(1e30))
targets = st.lists(st.lists(anything, min_size=10, max_size=10), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(targets)
def test_any_target_sequence_stays_safe(sequence):
    safety = fresh()
    low, high = np.asarray(LIMITS.workspace_min), np.asarray(LIMITS.workspace_max)
    axis = np.asarray(LIMITS.cone_axis)
    previous_position, previous_rotation = HOME, DOWN
    for values in sequence:
        out = safety.filter(np.asarray(values))
        if not np.all(np.isfinite(values)):
            assert out.action is None and out.reasons == ("non-finite target",)
        outside = np.linalg.norm(np.asarray(values[:3]) - np.clip(values[:3], low, high))
        if np.all(np.isfinite(values)) and outside > LIMITS.reject_outside_m:
            assert out.action is None
        if out.action is None:
            continue
        position, rotation = out.action[:3], matrix_from_rot6d(out.action[3:9])
        assert np.all(position >= low - 1e-12) and np.all(position <= high + 1e-12)
        assert cone_angle(rotation, axis) <= np.radians(LIMITS.cone_half_angle_deg) + 1e-6
        step = np.linalg.norm(position - previous_position)
        assert step <= LIMITS.max_speed_m_s * PERIOD + 1e-9
        turn = np.linalg.norm(rotvec_from_matrix(previous_rotation.T @ rotation))
        assert turn <= LIMITS.max_angular_speed_rad_s * PERIOD + 1e-6
        assert LIMITS.gripper_min_m <= out.action[9] <= LIMITS.gripper_max_m
        previous_position, previous_rotation = position, rotation


def test_each_clamp_and_rejection_is_named_and_counted():
    safety = fresh()
    assert safety.filter(target(HOME)).reasons == ()
    assert safety.filter(target([0.31, 0.0, 0.605])).reasons == ("workspace", "translation jump")
    assert safety.filter(target([0.31, 0.0, 2.0])).reasons == (
        "far outside the workspace (1.400 m)",
    )
    assert safety.filter(target([0.31, 0.2, 0.52])).reasons == ("jump too large (0.200 m)",)
    assert safety.filter(np.full(10, np.nan)).reasons == ("non-finite target",)
    assert safety.filter(target(HOME, np.zeros((3, 3)))).reasons == ("degenerate rotation",)
    tilted = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float) @ DOWN  # 90 deg off
    reasons = safety.filter(target(HOME, tilted)).reasons
    assert "orientation cone" in reasons and "rotation jump" in reasons
    assert safety.filter(target(HOME, gripper=0.5)).reasons[-1] == "gripper width"
    assert safety.counts["non-finite target"] == 1 and safety.counts["workspace"] == 1


def test_a_jump_is_spread_over_steps_toward_the_target():
    safety = fresh()
    goal = HOME + np.array([0.1, 0.0, 0.0])
    positions = [safety.filter(target(goal)).action[:3] for _ in range(5)]
    np.testing.assert_allclose(positions[0], HOME + np.array([0.03, 0.0, 0.0]))
    np.testing.assert_allclose(positions[-1], goal)


def test_filter_needs_a_reference_pose_and_limits_are_checked():
    with pytest.raises(RuntimeError, match="reset"):
        SafetyFilter(LIMITS, PERIOD).filter(target(HOME))
    with pytest.raises(ConfigError, match="workspace_min must be below"):
        SafetyFilter(SafetyLimits(workspace_min=(1.0, 0.0, 0.0)), PERIOD)
    with pytest.raises(ConfigError, match="cone_half_angle_deg"):
        SafetyFilter(SafetyLimits(cone_half_angle_deg=0.0), PERIOD)
