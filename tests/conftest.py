"""Shared fixtures: worlds are built once per module (building the GL context costs ~0.1 s);
a tiny random-weight model for the runtime tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onedp_control.config import from_dict
from onedp_control.policies.diffusion import ModelConfig
from onedp_control.sim.world import PnpMilkWorld

# DDS over UDP on loopback only, for this process and every node it starts (they inherit the
# environment): the tests kill nodes on purpose (the fault suite, a node that does not exit in
# time), and Fast DDS's shared-memory transport keeps a killed process's segments and port
# locks in /dev/shm, where they can block a later participant forever (eProsima/Fast-DDS#1144,
# #6484). A CI run hung, silent, in the first graph test after the one that kills the recorder
# (test_recording.py), as such a block would.
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4")

# The smallest model the learning, engine and runtime tests build: as a config file spells it
# (lists), and as the ModelConfig it becomes.
TINY_MODEL_FIELDS = {
    "resize": [36, 48],
    "image_size": [32, 44],
    "vision_width": 8,
    "keypoints": 8,
    "feature_dim": 16,
    "down_dims": [16, 32],
    "step_embed_dim": 16,
    "groups": 4,
}
TINY_MODEL = from_dict(ModelConfig, TINY_MODEL_FIELDS, "tests/conftest.py")


@pytest.fixture(scope="module")
def world():
    with PnpMilkWorld("pnp_milk") as w:
        yield w


@pytest.fixture(scope="module")
def moving_world():
    with PnpMilkWorld("pnp_milk_move") as w:
        yield w


HOME_ACTION = (0.31, 0.0, 0.49, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.08)  # the sim arm's home


def write_tiny_model(path: Path, home=HOME_ACTION) -> Path:
    """A random-weight one-step model whose actions stay within 2 cm of `home` (a 10-D
    action): for tests of the running graph's plumbing and timing, not of skill."""
    import dataclasses

    import torch

    from onedp_control.learning.checkpoint import model_payload, save_checkpoint
    from onedp_control.policies.diffusion import DiffusionPolicy
    from onedp_control.policies.onedp import OneDPConfig

    torch.manual_seed(0)
    model = DiffusionPolicy(TINY_MODEL)
    # Normalised actions in [-1, 1] map to home +- 2 cm (and +- 0.02 on the other dims).
    model.normalizer.action_scale.fill_(50.0)
    model.normalizer.action_offset.copy_(-50.0 * torch.tensor(home, dtype=torch.float32))
    onedp = {"onedp": dataclasses.asdict(OneDPConfig())}
    save_checkpoint(path, model_payload("onedp-s", model, onedp))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny_onedp_s.pt")


FRANKY_SIM_START_TIMEOUT_S = 60.0


def start_franky_sim(log_path: Path) -> tuple[subprocess.Popen, str]:
    """Starts a franky-sim server and returns it with the loopback address it serves on.

    libfranka always uses ports 1337 (arm) and 1338 (hand), so servers are told apart by address:
    franky-sim binds the first 127.x.y.z where both ports are free, and prints it."""
    pytest.importorskip("franky_sim", reason="franky-sim is not installed (franky-sim==1.0.4)")
    command = [
        sys.executable,
        "-c",
        "from franky_sim.run_server import main; main()",
        # The default ("auto") gives up at the first backend that fails to import (genesis).
        "--simulator",
        "mujoco",
    ]
    with log_path.open("w") as log:
        # Unbuffered, so that the address line reaches the log while the server runs.
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    deadline = time.monotonic() + FRANKY_SIM_START_TIMEOUT_S
    while time.monotonic() < deadline and server.poll() is None:
        address = re.search(r"using '([\d.]+)' as the robot IP", log_path.read_text())
        if address:
            return server, address.group(1)
        time.sleep(0.1)
    stop_process(server)
    pytest.fail(f"franky-sim did not start:\n{log_path.read_text()}")


def stop_process(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def franky_sim_host(tmp_path_factory):
    """A franky-sim server on its own loopback address, for the module's tests."""
    server, host = start_franky_sim(tmp_path_factory.mktemp("franky_sim") / "server.log")
    yield host
    stop_process(server)


@pytest.fixture
def ros_domain():
    """A ROS domain of the test's own, with rclpy initialised in it: the graphs of two tests
    never hear each other, even while the last one's processes exit."""
    import rclpy

    domain = 1 + (os.getpid() * 7 + next(_DOMAINS)) % 100
    rclpy.init(domain_id=domain)
    yield domain
    rclpy.shutdown()


_DOMAINS = __import__("itertools").count()


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus) -> None:
    _EXIT_STATUS.append(int(exitstatus))


def pytest_unconfigure(config) -> None:
    """Leave without the interpreter's teardown once pytest has reported: a CI run of the whole
    suite ended in a segmentation fault after its summary, in a C extension's destructor at
    exit (offscreen GL contexts, librealsense and DDS participants are all alive by then), and
    turned a passing run into a failing exit status."""
    if _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
