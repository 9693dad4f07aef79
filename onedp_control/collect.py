"""`onedp collect`: scripted-expert demonstrations, or a learned policy's rollouts, into a dataset.

A learned policy's rollouts (`policy=`) record the states that policy visits, with the targets
it executed as actions: observations for the one-step distillations, whose losses use the
teacher and not the recorded actions (several datasets can feed one run: `dataset:` as a list).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from onedp_control.dataset import DatasetError, DatasetWriter, EpisodeBuffer
from onedp_control.errors import ConfigError
from onedp_control.files import check_output_path
from onedp_control.policies import make_policy
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
    policy: str | None = None,
    sampler: str | None = None,
) -> CollectReport:
    """Runs the expert (or `policy`, a policy file, with `sampler`) on seeds seed, seed+1, ...
    until `episodes` episodes are kept.

    Failed attempts are discarded unless `keep_failures`. Nothing is written to `out` unless the
    whole collection completes. `perturb`: the arm executes the expert's targets with noise and
    the expert's own targets are recorded (`PerturbedExpert`).
    """
    if episodes < 1:
        raise ConfigError(f"--episodes must be a positive integer, got {episodes}")
    if policy is not None and perturb:
        raise ConfigError("--perturb perturbs the scripted expert; it does not apply to --policy")
    if policy is None and sampler is not None:
        raise ConfigError("--sampler applies to a learned policy (--policy)")
    check_output_path(out, overwrite, directory=True)  # before minutes of work, not after
    with PnpMilkWorld(task) as world:
        perturbed = PerturbedExpert(world) if perturb else None
        if policy is not None:
            actor = make_policy(policy, world, sampler, None)
            source = f"rollouts of {actor.name}"
        else:
            actor = perturbed or ScriptedExpert(world)
            source = "scripted expert" + (", perturbed execution" if perturb else "")
        writer = DatasetWriter(
            out,
            attrs={
                "task": world.task.name,
                "control_rate_hz": world.task.control_rate_hz,
                "source": f"onedp collect ({source})",
            },
            image_shape=(world.task.image_height, world.task.image_width),
            overwrite=overwrite,
        )

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
                    actor_kind = "expert" if policy is None else "policy"
                    raise DatasetError(
                        f"{out}: the {actor_kind} succeeded on only {writer.episodes} of "
                        f"{attempts} episodes; nothing was written (--keep-failures keeps them)"
                    )
                episode = EpisodeBuffer()
                result = run_episode(world, actor, seed + attempts, on_step=record(episode))
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
