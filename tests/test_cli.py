"""Bad command lines get one clear error, exit status 2, and leave nothing behind."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from onedp_control.cli import main


def run_cli(args, capsys):
    try:
        status = main(args)
    except SystemExit as exit_:  # argparse errors
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["collect", "--task", "pnp_cereal", "--episodes", "1", "--out", "{tmp}/d.zarr"],
            "invalid choice: 'pnp_cereal'",
        ),
        (
            ["collect", "--task", "pnp_milk", "--episodes", "-3", "--out", "{tmp}/d.zarr"],
            "must be a positive integer, got -3",
        ),
        (
            ["collect", "--task", "pnp_milk", "--episodes", "0", "--out", "{tmp}/d.zarr"],
            "must be a positive integer, got 0",
        ),
        (
            ["collect", "--task", "pnp_milk", "--episodes", "two", "--out", "{tmp}/d.zarr"],
            "'two' is not an integer",
        ),
        (
            ["collect", "--task", "pnp_milk", "--episodes", "1", "--out", "{tmp}/afile/d.zarr"],
            "afile is not a directory",
        ),
        (["eval", "--task", "nope", "--policy", "expert"], "invalid choice: 'nope'"),
        (
            ["eval", "--task", "pnp_milk", "--policy", "expert", "--episodes", "-1"],
            "must be a positive integer",
        ),
        (
            ["eval", "--task", "pnp_milk", "--policy", "ckpt.pt", "--episodes", "1"],
            "--policy: 'ckpt.pt' is neither a built-in policy",
        ),
        (
            ["eval", "--task", "pnp_milk", "--policy", "expert", "--json", "{tmp}/afile/r.json"],
            "afile is not a directory",
        ),
        (
            ["eval", "--task", "pnp_milk", "--policy", "expert", "--json", "{tmp}"],
            "exists and is a directory",
        ),
        (
            ["eval", "--task", "pnp_milk", "--policy", "expert", "--latency-ms", "50"],
            "--latency-ms only applies with --clock realtime",
        ),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(tmp_path, capsys, args, message):
    (tmp_path / "afile").write_text("not a directory")
    before = sorted(tmp_path.rglob("*"))
    status, _, err = run_cli([a.format(tmp=tmp_path) for a in args], capsys)
    assert status == 2
    assert message in err
    assert err.count("error:") == 1, err
    assert sorted(tmp_path.rglob("*")) == before


def test_eval_writes_the_report(tmp_path, capsys):
    out = tmp_path / "reports" / "expert.json"
    status, stdout, _ = run_cli(
        [
            "eval",
            "--task",
            "pnp_milk",
            "--policy",
            "expert",
            "--episodes",
            "2",
            "--json",
            str(out),
            "--quiet",
        ],
        capsys,
    )
    assert status == 0
    report = json.loads(out.read_text())
    assert report["episodes"] == 2 and len(report["per_episode"]) == 2
    assert 0.0 <= report["success_rate"] <= 1.0
    assert report["success_rate"] == 1.0 and report["completion_time_s"] > 0
    assert "success rate" in stdout and "completion time" in stdout


def test_eval_realtime_clock_with_latency(tmp_path, capsys):
    out = tmp_path / "rt.json"
    status, _, _ = run_cli(
        [
            "eval",
            "--task",
            "pnp_milk",
            "--policy",
            "expert",
            "--episodes",
            "1",
            "--clock",
            "realtime",
            "--latency-ms",
            "0",
            "--json",
            str(out),
            "--quiet",
        ],
        capsys,
    )
    assert status == 0
    assert json.loads(out.read_text())["clock"] == "realtime"


def test_console_script_is_installed():
    onedp = Path(sys.executable).parent / "onedp"
    completed = subprocess.run([str(onedp), "--help"], capture_output=True, text=True, check=True)
    for command in ("collect", "eval", "bench"):
        assert command in completed.stdout


def test_bench_sim_quick_writes_json_and_markdown(tmp_path, capsys):
    status, _, _ = run_cli(
        [
            "bench",
            "sim",
            "--quick",
            "--json",
            str(tmp_path / "b.json"),
            "--md",
            str(tmp_path / "b.md"),
        ],
        capsys,
    )
    assert status == 0
    report = json.loads((tmp_path / "b.json").read_text())
    for key in ("physics_steps_per_s", "render_fps_both_cameras", "episode_control_steps_per_s"):
        assert report[key] > 0
    assert "| render fps, both cameras" in (tmp_path / "b.md").read_text()
