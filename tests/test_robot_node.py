"""The robot node (franky) in the real graph, against franky-sim on loopback with the real
franky client: software cameras, the policy, the watchdog and the robot node as processes. The
node streams targets at 20 Hz once healthy, the arm moves, and losing the robot makes it hold
and say why."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (./setup.sh installs them)")
pytest.importorskip("franky_sim", reason="franky-sim is not installed (./setup.sh installs it)")


from onedp_control.faults import GraphMonitor
from onedp_control.ros.runner import GraphRunner
from onedp_control.runtime.graph import LaunchArguments
from tests.conftest import start_franky_sim, stop_process, write_tiny_model

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[1] / "config" / "pnp_milk.yaml"
FRANKY_SIM_START = (0.5544, 0.0, 0.5214, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.08)


def test_robot_node_streams_to_franky_sim_and_holds_when_the_robot_is_lost(tmp_path, ros_domain):
    # A model acting within 2 cm of where franky-sim starts the arm (the safety filter rejects
    # targets far from the measured pose).
    tiny_model = write_tiny_model(tmp_path / "tiny.pt", FRANKY_SIM_START)
    server, host = start_franky_sim(tmp_path / "franky_sim.log")
    config = yaml.safe_load(CONFIG.read_text())
    config["camera"]["ros__parameters"]["source"] = "software"
    config["robot"]["ros__parameters"]["enforce_realtime"] = False  # no realtime kernel here
    # franky-sim and its 1 kHz client share the two cores with every node: this test is about
    # the robot node, so the latency budget is loose here (tests/test_faults.py holds it tight).
    config["watchdog"]["ros__parameters"].update(
        recover_after_s=0.3, inference_ms=1000.0, observation_age_ms=1000.0, command_period_ms=500.0
    )
    path = tmp_path / "franky_sim.yaml"
    path.write_text(yaml.safe_dump(config))
    arguments = LaunchArguments(config=str(path), engine=str(tiny_model), robot_host=host)
    runner = GraphRunner(path, arguments, {}, ros_domain)
    monitor = GraphMonitor("robot_node_test")
    runner.start(tmp_path / "logs")
    try:
        runner.bring_up(monitor.node, monitor.executor)
        assert monitor.spin_until(lambda: monitor.streaming_now(10), 60.0), (
            f"no streaming: {monitor.diagnostics[-3:]}"
        )
        with monitor.lock:
            stamps = [stamp for stamp, _, _ in monitor.commands[-10:]]
            sent = [action for _, streaming, action in monitor.commands if streaming]
        assert np.median(np.diff(stamps)) == pytest.approx(0.05, abs=0.005)
        assert np.ptp(np.array(sent)[:, :3], axis=0).max() > 1e-3, "the targets move the arm"
        lost_at = time.time()
        stop_process(server)
        assert monitor.spin_until(
            lambda: any(
                t > lost_at and "robot error" in message for t, message in monitor.diagnostics
            ),
            10.0,
        ), monitor.diagnostics[-3:]
        with monitor.lock:
            after = [streaming for stamp, streaming, _ in monitor.commands if stamp > lost_at + 2]
        # Nothing streams once the robot is gone (an arm that loses its controller stops by
        # itself; libfranka's calls on the dead connection may block the loop meanwhile).
        assert not any(after), "no target streamed once the robot is gone"
    finally:
        runner.stop()
        monitor.close()
        if server.poll() is None:
            stop_process(server)
