"""`onedp bench sim`: how fast the simulated cell runs on this machine.

Numbers, not assertions: physics steps per second, control steps per second (tracking at the
physics rate, no rendering), rendering frames per second for each camera and for the pair, and
whole expert episodes (tracking + both cameras every control step) in control steps per second.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import datetime, timezone

import mujoco

from onedp_control.policies.expert import ScriptedExpert
from onedp_control.rollout import run_episode
from onedp_control.sim.scene import CAMERAS
from onedp_control.sim.world import PnpMilkWorld


def _rate(fn, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.perf_counter() - start)


def bench_sim(task: str = "pnp_milk", quick: bool = False) -> dict:
    scale = 1 if quick else 5
    with PnpMilkWorld(task) as world:
        world.reset(0)
        model, data = world.model, world.data
        physics = _rate(lambda: mujoco.mj_step(model, data), 2000 * scale)
        world.reset(0)
        control = _rate(world.hold, 40 * scale)
        render = {cam: _rate(lambda cam=cam: world.render(cam), 100 * scale) for cam in CAMERAS}
        pair = _rate(lambda: [world.render(cam) for cam in CAMERAS], 100 * scale)
        expert = ScriptedExpert(world)
        results = [run_episode(world, expert, seed) for seed in range(2 * scale)]
    episode_steps = sum(r.steps for r in results)
    return {
        "task": task,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "mujoco": mujoco.__version__,
        "gl": os.environ.get("MUJOCO_GL", ""),
        "image_size": [world.task.image_height, world.task.image_width],
        "physics_timestep_s": float(model.opt.timestep),
        "physics_steps_per_s": physics,
        "control_steps_per_s_no_render": control,
        "render_fps": render,
        "render_fps_both_cameras": pair,
        "episode_control_steps_per_s": episode_steps / sum(r.wall_time_s for r in results),
        "episode_realtime_factor": (
            episode_steps * world.task.control_period_s / sum(r.wall_time_s for r in results)
        ),
        "episodes": len(results),
    }


def to_markdown(report: dict) -> str:
    rows = [
        ("physics steps / s", f"{report['physics_steps_per_s']:.0f}"),
        (
            "control steps / s (tracking, no render)",
            f"{report['control_steps_per_s_no_render']:.0f}",
        ),
        *((f"render fps, {cam} camera", f"{fps:.0f}") for cam, fps in report["render_fps"].items()),
        ("render fps, both cameras (pairs / s)", f"{report['render_fps_both_cameras']:.0f}"),
        ("expert episode, control steps / s", f"{report['episode_control_steps_per_s']:.0f}"),
        ("expert episode, x real time", f"{report['episode_realtime_factor']:.1f}"),
    ]
    lines = [
        f"Sim benchmark, task `{report['task']}`, {report['date']}, {report['machine']}, "
        f"MuJoCo {report['mujoco']} ({report['gl']}), images "
        f"{report['image_size'][0]}x{report['image_size'][1]}",
        "",
        "| measure | value |",
        "| --- | ---: |",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    return "\n".join(lines) + "\n"
