"""A collected dataset reads back with the right episode boundaries; bad datasets are named."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from onedp_control.cli import main
from onedp_control.dataset import Dataset, DatasetError, DatasetWriter, EpisodeBuffer
from onedp_control.policies.expert import ScriptedExpert
from onedp_control.rollout import run_episode

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "demo.zarr"
    assert (
        main(
            [
                "collect",
                "--task",
                "pnp_milk",
                "--episodes",
                "2",
                "--out",
                str(out),
                "--seed",
                "40",
                "--quiet",
            ]
        )
        == 0
    )
    return out


def test_dataset_reads_back_with_episode_boundaries(collected, world):
    data = Dataset(collected)
    assert data.n_episodes == 2
    assert data.attrs["task"] == "pnp_milk" and data.attrs["control_rate_hz"] == 20.0
    # Replaying the same seeds gives the same episode lengths as the stored boundaries.
    expert = ScriptedExpert(world)
    lengths = [run_episode(world, expert, int(seed)).steps for seed in data.episode_seeds]
    np.testing.assert_array_equal(data.episode_ends, np.cumsum(lengths))
    for index in range(2):
        episode = data.episode(index)
        assert len(episode["action"]) == lengths[index]
        assert episode["front_rgb"].shape == (lengths[index], 120, 160, 3)
        assert episode["wrist_rgb"].dtype == np.uint8
        assert episode["ee_pos"].shape == (lengths[index], 3)
        assert episode["action"].shape == (lengths[index], 10)
        # Each episode starts at time zero with the gripper open and ends with it open.
        assert episode["timestamp"][0] == 0.0
        np.testing.assert_allclose(np.diff(episode["timestamp"]), 0.05, atol=1e-9)
        assert episode["gripper_width"][0, 0] == pytest.approx(0.08, abs=1e-3)
        assert episode["action"][-1, 9] == pytest.approx(0.08)


def test_first_frame_of_each_episode_is_the_reset_scene(collected, world):
    data = Dataset(collected)
    for index, seed in enumerate(data.episode_seeds):
        observation = world.reset(int(seed))
        np.testing.assert_array_equal(data.episode(index)["front_rgb"][0], observation.front_rgb)


def test_existing_dataset_is_not_overwritten_without_asking(collected, capsys):
    before = sorted(p.name for p in collected.rglob("*"))
    assert (
        main(
            ["collect", "--task", "pnp_milk", "--episodes", "1", "--out", str(collected), "--quiet"]
        )
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in collected.rglob("*")) == before


def test_interrupted_write_leaves_nothing(tmp_path, world):
    out = tmp_path / "never.zarr"
    writer = DatasetWriter(out, {"task": "pnp_milk"}, (120, 160), overwrite=False)
    episode = EpisodeBuffer()
    run_episode(world, ScriptedExpert(world), 0, on_step=episode.add)
    writer.add_episode(episode, 0)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_missing_array_and_wrong_boundaries_are_named(collected, tmp_path):
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(collected, broken)
    root = zarr.open_group(str(broken), mode="r+")
    del root["meta/episode_ends"]
    root["meta"].create_array("episode_ends", data=np.array([5, 3], dtype=np.int64))
    with pytest.raises(DatasetError, match="meta/episode_ends"):
        Dataset(broken)
    del root["data/wrist_rgb"]
    with pytest.raises(DatasetError, match="data/wrist_rgb"):
        Dataset(broken)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset"):
        Dataset(tmp_path / "missing.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        Dataset(tmp_path / "empty")
