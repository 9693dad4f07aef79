"""The fault-injection suite on the running graph (a CI subset of `onedp faults`), and bad
input at start-up: each gives one clear error naming the file or field, exits non-zero, and the
robot never moves."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (./setup.sh installs them)")

from onedp_control.cli import main
from onedp_control.faults import run_faults

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[1] / "config" / "pnp_milk.yaml"
CI_FAULTS = (
    "camera stream stalls",
    "engine returns NaN",
    "target outside the workspace",
    "robot reports an error",
)


def test_faults_are_held_within_a_period_with_no_unsafe_command(tiny_model, tmp_path):
    report = run_faults(tiny_model, CONFIG, quick=True, log_dir=tmp_path, names=CI_FAULTS)
    assert [r["fault"] for r in report["faults"]] == list(CI_FAULTS)
    for result in report["faults"]:
        assert result["held"], result
        assert result["unsafe_commands"] == 0, result
        assert result["detected_ms"] is not None and result["detected_ms"] < 1000, result
        assert result["recovered"], result
        assert result["cause"], result


def test_bad_config_is_refused_before_anything_starts(tmp_path, capsys):
    config = yaml.safe_load(CONFIG.read_text())
    config["watchdog"]["ros__parameters"]["inference_ms"] = "fast"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    assert main(["run", "pnp_milk", "--sim", "--config", str(bad)]) == 2
    assert "bad.yaml: watchdog.inference_ms: expected a number" in capsys.readouterr().err


def test_missing_or_truncated_engine_is_refused(tmp_path, tiny_model, capsys):
    assert main(["run", "pnp_milk", "--sim", "--engine", str(tmp_path / "none.pt")]) == 2
    assert "none.pt: no such file" in capsys.readouterr().err
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(tiny_model.read_bytes()[:2000])
    assert main(["run", "pnp_milk", "--sim", "--engine", str(truncated)]) == 2
    assert "cut.pt: not a readable checkpoint" in capsys.readouterr().err


def test_camera_serial_not_found_stops_before_the_robot(tiny_model, capsys):
    code = main(
        [
            "run",
            "pnp_milk",
            "--engine",
            str(tiny_model),
            "--front-serial",
            "000111",
            "--wrist-serial",
            "000222",
            "--robot-host",
            "127.0.0.1",
            "--timeout",
            "120",
        ]
    )
    error = capsys.readouterr().err
    assert code == 2 and "node 'camera'" in error and "000111" in error


def test_unreachable_robot_fails_its_configure(tmp_path, tiny_model, capsys):
    config = yaml.safe_load(CONFIG.read_text())
    config["camera"]["ros__parameters"]["source"] = "software"
    path = tmp_path / "software_cameras.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(
        [
            "run",
            "pnp_milk",
            "--config",
            str(path),
            "--engine",
            str(tiny_model),
            "--robot-host",
            "127.0.0.9",
            "--timeout",
            "120",
        ]
    )
    error = capsys.readouterr().err
    assert code == 2 and "node 'robot'" in error and "127.0.0.9" in error
