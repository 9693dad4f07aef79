"""`onedp report methods`: every one-step method beside its teacher, in one table.

A plan file (config/report/<task>_methods.yaml) lists the rows: a label, a policy file and a
sampler. Each row is scored by `evaluate` on the task with the lockstep clock (the policy's
quality alone) and on its `_move` variant with the real-time clock (the carton pushed away while
the policy thinks: what latency costs), over the same seeds; the training cost comes from the
policy file's lineage (every phase, the teacher's too). Rows whose policy file does not exist
are listed as not trained, not left out. The JSON is rewritten after each row, and `--resume`
keeps the rows already scored with the same episodes, policy file and sampler, so a long CPU
run can be continued (or a row scored again by pointing it at another file).
"""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from onedp_control.config import from_dict
from onedp_control.engines.base import manifest_path, read_manifest
from onedp_control.errors import ConfigError
from onedp_control.evaluate import EVAL_SEED, evaluate
from onedp_control.files import write_json_atomic
from onedp_control.learning.checkpoint import read_checkpoint, training_lineage


@dataclass(frozen=True)
class ReportRow:
    label: str
    policy: str
    sampler: str | None = None  # None: the policy's own sampler


@dataclass(frozen=True)
class ReportPlan:
    task: str
    rows: list[ReportRow]


def load_plan(path: Path) -> ReportPlan:
    import yaml

    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read the plan ({error})") from None
    if not isinstance(values, dict) or not isinstance(values.get("rows"), list):
        raise ConfigError(f"{path}: expected a mapping with task and a list of rows")
    rows = [
        from_dict(ReportRow, row, f"{path}: rows[{index}]")
        for index, row in enumerate(values["rows"])
    ]
    if not isinstance(values.get("task"), str):
        raise ConfigError(f"{path}: task must name the task")
    labels = [row.label for row in rows]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: row labels must be unique")
    return ReportPlan(values["task"], rows)


def training_cost(policy: Path) -> dict:
    """Steps per phase from the policy's lineage (a checkpoint's, or the manifest's of an
    exported engine), and their total."""
    if policy.suffix == ".pt":
        lineage = training_lineage(read_checkpoint(policy), policy)
    else:
        manifest, _ = read_manifest(policy)
        if "lineage" not in manifest:
            raise ConfigError(
                f"{manifest_path(policy)}: no training lineage (exported before engines "
                f"carried one); export {manifest.get('checkpoint', 'the checkpoint')} again"
            )
        lineage = manifest["lineage"]
    steps = [entry.get("steps") or 0 for entry in lineage]
    return {
        "phases": [f"{entry.get('method')} {entry.get('steps')}" for entry in lineage],
        "total_steps": sum(steps),
        "own_steps": steps[-1],
    }


def _score(result: dict) -> dict:
    return {
        "success_rate": result["success_rate"],
        "successes": result["successes"],
        "completion_time_s": result["completion_time_s"],
        "inference_ms_median": result["inference_ms"]["median"],
    }


def report_methods(
    plan_path: Path,
    episodes: int,
    json_path: Path | None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    plan = load_plan(plan_path)
    done: dict[str, dict] = {}
    if resume and json_path is not None and json_path.exists():
        import json

        earlier = json.loads(json_path.read_text())
        if earlier.get("episodes") == episodes and earlier.get("task") == plan.task:
            done = {row["label"]: row for row in earlier["rows"] if row.get("scored")}
    report = {
        "task": plan.task,
        "episodes": episodes,
        "first_seed": EVAL_SEED,
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} (CPU)",
        "rows": [],
    }
    for row in plan.rows:
        earlier_row = done.get(row.label)
        # Compared with the sampler the plan asked for: the stored `sampler` is the resolved
        # one, which cannot tell "the policy's own" (None) from a sampler the plan named.
        scored_as = (
            None
            if earlier_row is None
            else (earlier_row["policy"], earlier_row.get("plan_sampler"))
        )
        if scored_as == (row.policy, row.sampler):
            report["rows"].append(earlier_row)
            continue
        entry: dict = {
            "label": row.label,
            "policy": row.policy,
            "sampler": row.sampler,
            "plan_sampler": row.sampler,
        }
        policy = Path(row.policy)
        if not policy.is_file():
            entry["scored"] = False
            entry["note"] = f"not trained here ({row.policy} missing)"
        else:
            entry["training"] = training_cost(policy)
            lockstep = evaluate(
                plan.task, row.policy, episodes, sampler=row.sampler, progress=progress
            )
            moved = evaluate(
                f"{plan.task}_move",
                row.policy,
                episodes,
                clock="realtime",
                sampler=row.sampler,
                progress=progress,
            )
            entry.update(
                scored=True,
                sampler=lockstep["sampler"],
                backend=lockstep["backend"],
                nfe=lockstep["nfe"],
                lockstep=_score(lockstep),
                realtime_move=_score(moved),
            )
        report["rows"].append(entry)
        if json_path is not None:
            write_json_atomic(json_path, report)
    return report


def _percent(score: dict) -> str:
    return f"{100 * score['success_rate']:.0f}% ({score['successes']})"


def _seconds(score: dict) -> str:
    time = score["completion_time_s"]
    return "-" if time is None else f"{time:.1f}"


def methods_markdown(report: dict) -> str:
    task = report["task"]
    lines = [
        f"Methods on `{task}` (lockstep clock) and `{task}_move` (real-time clock), "
        f"{report['episodes']} episodes each from seed {report['first_seed']}; "
        f"{report['date']}, {report['machine']}.",
        "",
        f"| method | NFE | {task} success | completion (s) | {task}_move success "
        "| completion (s) | inference median (ms) | training steps (phases) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        if not row.get("scored"):
            lines.append(f"| {row['label']} | | {row['note']} | | | | | |")
            continue
        lock, move, cost = row["lockstep"], row["realtime_move"], row["training"]
        lines.append(
            f"| {row['label']} | {row['nfe']} | {_percent(lock)} | {_seconds(lock)} | "
            f"{_percent(move)} | {_seconds(move)} | "
            f"{lock['inference_ms_median']:.1f} ({row['backend']}) | "
            f"{cost['total_steps']} ({' + '.join(cost['phases'])}) |"
        )
    return "\n".join(lines) + "\n"
