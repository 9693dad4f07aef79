"""The camera node reads each camera's calibration at configure: published CameraInfo carries
it, scaled to the 120x160 images; a missing or malformed file fails the configure, naming the
file, so the controller never starts on a wrong calibration."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (./setup.sh installs them)")

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402

from onedp_control.ros.camera_node import CameraNode  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "calibration"


def configure(calibration_dir: Path) -> tuple[CameraNode, TransitionCallbackReturn]:
    rclpy.init(
        args=[
            "test",
            "--ros-args",
            "-p",
            "source:=software",
            "-p",
            f"calibration_dir:={calibration_dir}",
        ]
    )
    node = CameraNode()
    return node, node.on_configure(None)


def close(node: CameraNode) -> None:
    node.close()
    node.destroy_node()
    rclpy.shutdown()


def test_calibration_is_loaded_and_scaled(tmp_path):
    shutil.copy(EXAMPLES / "front_d415.example.yaml", tmp_path / "software-front.yaml")
    shutil.copy(EXAMPLES / "wrist_d435.example.yaml", tmp_path / "software-wrist.yaml")
    node, result = configure(tmp_path)
    try:
        assert result == TransitionCallbackReturn.SUCCESS
        info = node.calibration["front"]
        assert (info.width, info.height) == (160, 120)
        assert info.k[0] == pytest.approx(604.87 / 4) and info.k[5] == pytest.approx(243.92 / 4)
    finally:
        close(node)


def test_missing_or_malformed_calibration_fails_configure(tmp_path, capfd):
    node, result = configure(tmp_path)
    close(node)
    assert result == TransitionCallbackReturn.FAILURE
    assert "software-front.yaml: no calibration for camera 'front'" in capfd.readouterr().err
    (tmp_path / "software-front.yaml").write_text("image_width: [")
    shutil.copy(EXAMPLES / "wrist_d435.example.yaml", tmp_path / "software-wrist.yaml")
    node, result = configure(tmp_path)
    close(node)
    assert result == TransitionCallbackReturn.FAILURE
    assert "software-front.yaml" in capfd.readouterr().err
