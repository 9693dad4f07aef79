"""Package definition shared by pip (the `.venv` made by setup.sh) and colcon (ament_python).

colcon installs the ament resource marker, package.xml, launch files and config YAML into
share/onedp_control and, through setup.cfg, the console scripts into lib/onedp_control.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "onedp_control"

# Direct dependencies, pinned exactly; constraints.txt pins everything they pull in.
CORE = [
    "torch==2.13.0",  # never unpinned: an unpinned torch pulls GBs of CUDA wheels
    "numpy==2.4.6",
    "mujoco==3.3.7",
    "opencv-python-headless==4.13.0.92",
    "zarr==3.1.6",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",  # loss curves
    "pyyaml==6.0.3",
    "onnx==1.23.2",
    "onnxruntime==1.31.1",
    "onnxconverter-common==1.16.0",  # float32 -> float16 graphs for TensorRT 11 (strong typing)
    "h5py==3.16.0",  # onedp import robomimic
    "rosbags==0.11.9",  # onedp import rosbag (rosbag2, MCAP and sqlite3, without ROS)
    "pyrealsense2==2.59.1.11053",
    "franky-control==2.0.0",
]

EXTRAS = {
    # ROS 2 Kilted core from PyPI. Skip this extra where ROS 2 comes from apt (see README).
    "ros": [
        "ros-rclpy==9.1.2",
        "ros-rmw-fastrtps-cpp==9.3.3",
        "ros-std-msgs==5.5.1",
        "ros-sensor-msgs==5.5.1",
        "ros-geometry-msgs==5.5.1",
        "ros-diagnostic-msgs==5.5.1",
        "ros-lifecycle-msgs==2.3.0",
        "ros-trajectory-msgs==5.5.1",
        "ros-std-srvs==5.5.1",
    ],
    # TensorRT's wheel fetches its libraries from NVIDIA's own index at install time.
    "gpu": ["tensorrt==11.4.0.106", "cuda-python==13.4.4"],
    # Optional training dashboards (`train.tensorboard: true`).
    "tensorboard": ["tensorboard==2.21.0"],
    # A MuJoCo server speaking the libfranka protocol, to test the franky driver on loopback.
    "franky-sim": ["franky-sim==1.0.4"],
    "dev": [
        "pytest==8.4.2",  # launch_testing needs pytest < 9
        "hypothesis==6.170.15",
        "pytest-timeout==2.4.0",  # a hung test ends the run with its stack, not CI's limit
        "ruff==0.17.6",
        "colcon-core==0.21.3",
        "colcon-ros==0.5.0",
        "colcon-python-setup-py==0.2.9",
    ],
}

setup(
    name=PACKAGE,
    version="0.1.0",
    description="One-step distilled diffusion policy controller for a Franka Panda (ROS 2)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/models/pnp_milk", glob("models/pnp_milk/*")),
    ],
    install_requires=CORE,
    extras_require=EXTRAS,
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "onedp = onedp_control.cli:main",
            # The ROS 2 executables (lib/onedp_control/<name>_node, what `ros2 run` starts).
            *(
                f"{node}_node = onedp_control.ros.{node}_node:main"
                for node in (
                    "calibration",
                    "camera",
                    "policy",
                    "recorder",
                    "robot",
                    "sim",
                    "teleop",
                    "watchdog",
                )
            ),
        ]
    },
)
