"""`onedp eval`: success rate and completion time of a policy over seeded episodes."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from onedp_control.errors import ConfigError
from onedp_control.policies import make_policy
from onedp_control.rollout import run_episode
from onedp_control.sim.world import PnpMilkWorld

# Evaluation seeds start far from the collection seeds (0, 1, ...): scored scenes are unseen.
EVAL_SEED = 100_000


def median_p99(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    return {"median": float(np.median(values)), "p99": float(np.percentile(values, 99))}


def evaluate(
    task: str,
    policy_spec: str,
    episodes: int,
    seed: int = EVAL_SEED,
    clock: str = "lockstep",
    latency_s: float | None = None,
    progress: bool = True,
    sampler: str | None = None,
    backend: str | None = None,
) -> dict:
    if episodes < 1:
        raise ConfigError(f"--episodes must be a positive integer, got {episodes}")
    records = []
    with PnpMilkWorld(task) as world:
        policy = make_policy(policy_spec, world, sampler, backend)
        for index in tqdm(range(episodes), desc=f"eval {task}", unit="ep", disable=not progress):
            result = run_episode(world, policy, seed + index, clock=clock, latency_s=latency_s)
            records.append(result)
    successes = [r for r in records if r.success]
    times = [r.completion_time_s for r in successes]
    steps = sum(r.steps for r in records)
    wall = sum(r.wall_time_s for r in records)
    inference = np.concatenate([r.inference_ms for r in records])
    target_steps = np.concatenate([r.target_steps_m for r in records])
    failures: dict[str, int] = {}
    for r in records:
        if r.failure is not None:
            failures[r.failure] = failures.get(r.failure, 0) + 1
    return {
        "task": task,
        "policy": policy_spec,
        "sampler": None if policy.sampler is None else policy.sampler.label,
        "nfe": None if policy.sampler is None else policy.sampler.nfe,
        "backend": policy.backend,
        "clock": clock,
        "latency_override_ms": None if latency_s is None else latency_s * 1e3,
        "episodes": episodes,
        "first_seed": seed,
        "success_rate": len(successes) / episodes,
        "successes": len(successes),
        "completion_time_s": float(np.mean(times)) if times else None,
        "completion_time_std_s": float(np.std(times)) if times else None,
        "failures": failures,
        "inference_ms": median_p99(inference),
        # None when the policy never got a target through (realtime, latency beyond the chunk).
        "target_step_m": median_p99(target_steps),
        "control_steps_per_wall_s": steps / wall if wall > 0 else None,
        "per_episode": [r.summary() for r in records],
    }


def format_table(report: dict) -> str:
    time = report["completion_time_s"]
    time_text = "-" if time is None else f"{time:.2f} ± {report['completion_time_std_s']:.2f}"
    target_step = report["target_step_m"]
    target_step_text = (
        "-"
        if target_step is None
        else f"{target_step['median'] * 100:.2f} / {target_step['p99'] * 100:.2f}"
    )
    rows = [
        ("task", report["task"]),
        ("policy", report["policy"]),
        (
            "sampler (NFE)",
            "-" if report["sampler"] is None else f"{report['sampler']} ({report['nfe']})",
        ),
        ("clock", report["clock"]),
        ("episodes", str(report["episodes"])),
        (
            "success rate",
            f"{report['success_rate']:.1%} ({report['successes']}/{report['episodes']})",
        ),
        ("completion time (s)", time_text),
        ("failures", ", ".join(f"{k}: {v}" for k, v in report["failures"].items()) or "none"),
        (
            "inference median / p99 (ms)",
            f"{report['inference_ms']['median']:.2f} / {report['inference_ms']['p99']:.2f}",
        ),
        ("target step median / p99 (cm)", target_step_text),
        ("sim control steps / wall s", f"{report['control_steps_per_wall_s']:.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
