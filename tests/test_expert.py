"""The scripted expert solves both variants; the scripted person really moves the carton."""

import numpy as np
import pytest

from onedp_control.policies.expert import ScriptedExpert
from onedp_control.rollout import run_episode
from onedp_control.sim.tasks import PushSpec
from onedp_control.sim.world import CartonPusher

pytestmark = pytest.mark.slow


def test_expert_succeeds_on_pnp_milk(world):
    expert = ScriptedExpert(world)
    results = [run_episode(world, expert, seed) for seed in range(200, 206)]
    assert sum(r.success for r in results) >= 5, [r.summary() for r in results]
    for r in results:
        if r.success:
            assert world.task.time_limit_s > r.completion_time_s > 2.0


def test_expert_succeeds_on_pnp_milk_move_after_the_carton_moved(moving_world):
    expert = ScriptedExpert(moving_world)
    results = [run_episode(moving_world, expert, seed) for seed in range(300, 304)]
    assert sum(r.success for r in results) >= 3, [r.summary() for r in results]
    assert all(r.pushes >= 1 for r in results)


def test_carton_moves_away_when_the_gripper_comes_close(moving_world):
    expert = ScriptedExpert(moving_world)
    track = []

    def record(observation, action):
        track.append(moving_world.carton_pose()[0])

    run_episode(moving_world, expert, 5, on_step=record)
    track = np.asarray(track)
    start = track[0]
    # The carton travels at least the shortest push distance while still on the table.
    travelled = np.linalg.norm(track[:, :2] - start[:2], axis=1)
    assert travelled.max() > PushSpec().distance_m[0] * 0.9
    assert moving_world.pusher.done >= 1


def test_static_task_never_moves_the_carton(world):
    expert = ScriptedExpert(world)
    positions = []
    run_episode(
        world, expert, 9, on_step=lambda o, a: positions.append(world.carton_pose()[0].copy())
    )
    assert world.pusher is None
    # Until it is grasped (the gripper closes), the carton stays where it was placed.
    first = positions[0]
    assert np.linalg.norm(positions[20][:2] - first[:2]) < 1e-3


def test_pusher_path_is_smooth_and_ends_in_the_region():
    spec = PushSpec()
    pusher = CartonPusher(spec, np.random.default_rng(0))
    start = np.array([0.52, 0.14, 0.055])
    assert pusher.update(0.0, start, np.array([0.6, 0.3, 0.4]), 0.11, True) is None  # far away
    positions = []
    t = 0.0
    while True:
        imposed = pusher.update(t, start, start + np.array([0.0, 0.0, 0.1]), 0.11, True)
        if imposed is None:
            break
        positions.append(imposed[0])
        t += 0.002
    positions = np.asarray(positions)
    np.testing.assert_allclose(positions[0], start, atol=1e-6)
    end = positions[-1]
    assert spec.region_x[0] <= end[0] <= spec.region_x[1]
    assert spec.region_y[0] <= end[1] <= spec.region_y[1]
    assert spec.distance_m[0] - 1e-9 <= np.linalg.norm(end - start) <= spec.distance_m[1] + 1e-9
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    assert steps.max() < 0.002, "the person moves the carton smoothly, no teleport"
    assert pusher.done == 1
