"""`onedp collect`: scripted-expert demonstrations into a dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from onedp_control.dataset import DatasetError, DatasetWriter, EpisodeBuffer
from onedp_control.errors import ConfigError
from onedp_control.files import check_output_path
from onedp_control.policies.expert import PerturbedExpert, ScriptedExpert
from onedp_control.rollout import StepCallback, run_episode
from onedp_control.sim.world import PnpMilkWorld

# An expert that fails more often than this is broken: stop rather than loop for ever.
MAX_ATTEMPTS_PER_EPISODE = 2


@dataclass
class CollectReport:
    path: Path
    episodes: int
    steps: int
    attempts: int
    discarded: int


def collect(
    task: str,
    episodes: int,
    out: Path,
    seed: int = 0,
    keep_failures: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    perturb: bool = False,
) -> CollectReport:
    """Runs the expert on seeds seed, seed+1, ... until `episodes` demonstrations are kept.

    Failed attempts are discarded unless `keep_failures`. Nothing is written to `out` unless the
    whole collection completes. `perturb`: the arm executes the expert's targets with noise and
    the expert's own targets are recorded (`PerturbedExpert`).
    """
    if episodes < 1:
        raise ConfigError(f"--episodes must be a positive integer, got {episodes}")
    check_output_path(out, overwrite, directory=True)  # before minutes of work, not after
    with PnpMilkWorld(task) as world:
        writer = DatasetWriter(
            out,
            attrs={
                "task": world.task.name,
                "control_rate_hz": world.task.control_rate_hz,
                "source": "onedp collect (scripted expert"
                + (", perturbed execution)" if perturb else ")"),
            },
            image_shape=(world.task.image_height, world.task.image_width),
            overwrite=overwrite,
        )
        perturbed = PerturbedExpert(world) if perturb else None
        expert = perturbed or ScriptedExpert(world)

        def record(episode: EpisodeBuffer) -> StepCallback:
            """A perturbed run records what the expert meant, not the noisy target executed."""
            if perturbed is None:
                return episode.add
            return lambda observation, _: episode.add(observation, perturbed.clean_action)

        attempts = steps = 0
        bar = tqdm(total=episodes, desc=f"collect {task}", unit="ep", disable=not progress)
        try:
            while writer.episodes < episodes:
                if attempts >= MAX_ATTEMPTS_PER_EPISODE * episodes:
                    raise DatasetError(
                        f"{out}: the expert succeeded on only {writer.episodes} of {attempts} "
                        "episodes; nothing was written"
                    )
                episode = EpisodeBuffer()
                result = run_episode(world, expert, seed + attempts, on_step=record(episode))
                attempts += 1
                if result.success or keep_failures:
                    writer.add_episode(episode, result.seed)
                    steps += len(episode)
                    bar.update(1)
                bar.set_postfix(kept=writer.episodes, tried=attempts)
            path = writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
    return CollectReport(path, writer.episodes, steps, attempts, attempts - writer.episodes)
