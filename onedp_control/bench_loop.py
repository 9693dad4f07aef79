"""`onedp bench loop`: the command stream of a whole sim-in-the-loop run, as a table.

The numbers come from `onedp run --sim` (ros/runner.py): the period of the robot commands as
the graph saw them (median, p99 error against 50 ms, deadlines missed by more than half a
period) and the camera-to-command latency (a chunk's observation time to the first command
after the chunk arrived), with the run's success rate.
"""

from __future__ import annotations


def loop_markdown(report: dict) -> str:
    latency = report["latency"]
    rows = [
        ("episodes", report["episodes"]),
        ("success rate", f"{100 * report['success_rate']:.0f}%"),
        ("run time (s)", report["wall_time_s"]),
        ("commands", latency["commands"]),
        ("command period median (ms)", latency["command_period_median_ms"]),
        ("command period error p99 (ms)", latency["command_period_error_p99_ms"]),
        ("missed 50 ms deadlines", latency["missed_deadlines"]),
        ("camera to command median (ms)", latency["camera_to_command_ms_median"]),
        ("camera to command p99 (ms)", latency["camera_to_command_ms_p99"]),
        ("inference median (ms)", latency["inference_ms_median"]),
        ("inference p99 (ms)", latency["inference_ms_p99"]),
    ]
    lines = [
        f"Loop benchmark, engine `{report['engine']}`",
        "",
        "| measure | value |",
        "| --- | ---: |",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    return "\n".join(lines) + "\n"
