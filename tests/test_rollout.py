"""The two clocks: lockstep waits for the policy; realtime charges its latency to the world."""

from dataclasses import replace

import numpy as np
import pytest

from onedp_control.geometry import yaw_of
from onedp_control.rollout import run_episode
from onedp_control.sim.world import ACTION_DIM, make_action


class RecordingPolicy:
    """Asks for a fixed pose; remembers when it was asked and which steps ran."""

    name = "recording"
    obs_horizon = 2

    def __init__(self, world, chunk_len=16, action_steps=8):
        self.world = world
        self.chunk_len = chunk_len
        self.action_steps = action_steps
        self.calls = []
        self.histories = []

    def reset(self):
        self.calls.clear()
        self.histories.clear()

    def predict_chunk(self, history):
        self.calls.append(history[-1].state_stamp)
        self.histories.append([o.state_stamp for o in history])
        pos, rot = self.world.tcp_pose()
        # Each step's target encodes its index in the chunk in the gripper width.
        steps = [make_action(pos, rot, 0.001 * k) for k in range(self.chunk_len)]
        return np.asarray(steps) if steps else np.zeros((0, ACTION_DIM))


@pytest.fixture
def short_world(world):
    original = world.task
    world.task = replace(original, time_limit_s=1.0)  # 20 control steps
    yield world
    world.task = original


def test_lockstep_runs_action_steps_between_calls(short_world):
    policy = RecordingPolicy(short_world)
    executed = []
    result = run_episode(short_world, policy, 0, on_step=lambda o, a: executed.append(a[9]))
    assert result.failure == "timeout" and result.steps == 20
    # Calls every 8 steps (0.4 s) at the observation time; the first 8 entries run in order.
    np.testing.assert_allclose(policy.calls, [0.0, 0.4, 0.8])
    np.testing.assert_allclose(executed[:8], 0.001 * np.arange(8))
    # Observation horizon 2: consecutive frames one control period apart (repeated at start).
    assert policy.histories[0] == [0.0, 0.0]
    np.testing.assert_allclose(policy.histories[1], [0.35, 0.4])


def test_episode_records_the_carton_yaw_at_the_start(short_world):
    result = run_episode(short_world, RecordingPolicy(short_world), 3)
    short_world.reset(3)
    start_yaw = np.degrees(yaw_of(short_world.carton_pose()[1]))
    assert abs(start_yaw) > 1.0  # a turned carton: a missing value (0) would not pass
    assert result.summary()["carton_yaw_deg"] == pytest.approx(start_yaw, abs=0.05)


def test_realtime_skips_the_steps_that_passed_while_thinking(short_world):
    policy = RecordingPolicy(short_world)
    executed = []
    result = run_episode(
        short_world,
        policy,
        0,
        clock="realtime",
        latency_s=0.12,
        on_step=lambda o, a: executed.append(a[9]),
    )
    assert result.steps == 20
    # 120 ms = 3 control periods: the first 3 steps hold (no plan yet, gripper stays open),
    # then the chunk runs from its 4th entry.
    np.testing.assert_allclose(executed[:3], 0.08)
    np.testing.assert_allclose(executed[3:11], 0.001 * np.arange(3, 11))
    # While the second chunk is computed, the rest of the first one keeps the robot moving.
    np.testing.assert_allclose(executed[11:14], 0.001 * np.arange(11, 14))
    np.testing.assert_allclose(policy.calls[:2], [0.0, 0.55])


def test_realtime_with_latency_longer_than_the_chunk_holds(short_world):
    policy = RecordingPolicy(short_world, chunk_len=4, action_steps=4)
    executed = []
    run_episode(
        short_world,
        policy,
        0,
        clock="realtime",
        latency_s=0.3,
        on_step=lambda o, a: executed.append(a[9]),
    )
    # Every chunk is stale on arrival: the robot only ever holds its start pose.
    np.testing.assert_allclose(executed, 0.08)


class ZigzagPolicy(RecordingPolicy):
    """Targets 1 cm either side of the pose, alternating: every step 2 cm from the one before."""

    def predict_chunk(self, history):
        chunk = super().predict_chunk(history)
        chunk[:, 0] += 0.01 * (-1.0) ** np.arange(len(chunk))
        return chunk


def test_target_steps_measure_how_far_consecutive_targets_lie_apart(short_world):
    result = run_episode(short_world, ZigzagPolicy(short_world), 0)
    assert len(result.target_steps_m) == result.steps == 20
    # The first target is 1 cm from the start pose; within a chunk, 2 cm each step.
    np.testing.assert_allclose(result.target_steps_m[0], 0.01, atol=1e-3)
    np.testing.assert_allclose(result.target_steps_m[1:8], 0.02, atol=1e-3)
    held = run_episode(
        short_world,
        RecordingPolicy(short_world, chunk_len=4, action_steps=4),
        0,
        clock="realtime",
        latency_s=0.3,
    )
    assert held.target_steps_m == []  # holding is not a policy target


def test_unknown_clock_and_bad_chunk_are_refused(world):
    policy = RecordingPolicy(world, chunk_len=0)
    with pytest.raises(ValueError, match="clock"):
        run_episode(world, policy, 0, clock="wallclock")
    with pytest.raises(ValueError, match=r"returned a chunk of shape \(0, 10\)"):
        run_episode(world, policy, 0)
