"""The ROS 2 package: package.xml, the colcon workspace, and what colcon installs where."""

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import onedp_control

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_format_3_ament_python():
    package = ET.parse(ROOT / "package.xml").getroot()
    assert package.tag == "package" and package.get("format") == "3"
    assert package.findtext("name") == "onedp_control"
    assert package.findtext("export/build_type") == "ament_python"
    assert package.findtext("version") == onedp_control.__version__
    setup_version = re.search(r'version="([^"]+)"', (ROOT / "setup.py").read_text()).group(1)
    assert setup_version == onedp_control.__version__
    depends = {e.text for e in package.iter("exec_depend")}
    assert {"rclpy", "sensor_msgs", "diagnostic_msgs", "launch_ros"} <= depends


def test_workspace_src_links_to_the_package():
    link = ROOT / "ros2_ws" / "src" / "onedp_control"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == ROOT
    assert (ROOT / "resource" / "onedp_control").is_file()


def test_torch_is_pinned_everywhere():
    for name in ("setup.py", "constraints.txt"):
        pins = re.findall(r"^\s*\"?torch([=<>~!]=?[^\"\s,]*)?", (ROOT / name).read_text(), re.M)
        assert pins and all(pin == "==2.13.0" for pin in pins), (name, pins)


@pytest.mark.slow
def test_colcon_installs_into_share_and_lib(tmp_path):
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        colcon = shutil.which("colcon")
    if colcon is None:
        pytest.skip("colcon is not installed (./setup.sh installs it with the dev extra)")
    subprocess.run(
        [
            str(colcon),
            "--log-base",
            str(tmp_path / "log"),
            "build",
            "--base-paths",
            str(ROOT / "ros2_ws" / "src"),
            "--build-base",
            str(tmp_path / "build"),
            "--install-base",
            str(tmp_path / "install"),
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    prefix = tmp_path / "install" / "onedp_control"
    share = prefix / "share"
    assert (share / "ament_index" / "resource_index" / "packages" / "onedp_control").is_file()
    assert (share / "onedp_control" / "package.xml").is_file()
    # Executables go where `ros2 run onedp_control <exe>` looks.
    assert os.access(prefix / "lib" / "onedp_control" / "onedp", os.X_OK)
    for folder, pattern in (("launch", "*.launch.py"), ("config", "*.yaml")):
        wanted = sorted(p.name for p in (ROOT / folder).glob(pattern))
        installed = sorted(p.name for p in (share / "onedp_control" / folder).glob(pattern))
        assert installed == wanted
    site = next(prefix.glob("lib/python3*/site-packages"))
    assert (site / "onedp_control" / "sim" / "world.py").is_file()
