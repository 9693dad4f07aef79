"""`Robot` for a Franka arm and hand through franky (franky-control 2.0), or for franky-sim.

The arm streams absolute end-effector targets: each `send_target` hands franky a new
`CartesianMotion` asynchronously, and franky swaps it into the running control loop (its Ruckig
planner keeps the motion within the dynamics limits scaled by `dynamics_factor`). The hand is a
two-state device, closed (a force-controlled grasp) or open (a move to the commanded width), and
gets a command only when that state flips. The reported pose is the *measured* one, computed from
the measured joint positions with franky's kinematic model. Every franky error is raised as a
RobotError naming the host; connect() gives up after CONNECT_TIMEOUT_S where libfranka would wait
a minute.

Panda: the franky-control wheel on PyPI bundles libfranka 0.21, which speaks the FR3 protocol.
A Panda (system 4.x) needs franky's wheel built against libfranka 0.9, from franky's GitHub
releases; its Python API is the same, so this module runs on it unchanged.
"""

from __future__ import annotations

import contextlib
import socket
import time

import franky
import numpy as np

from onedp_control.robots.base import Robot, RobotError, RobotState

# The libfranka port a robot (and franky-sim) accepts commands on.
FCI_COMMAND_PORT = 1337
# libfranka waits about 60 s, spinning a core, when a host drops the connection attempt; a plain
# TCP probe with this timeout answers first.
CONNECT_TIMEOUT_S = 3.0
# The commanded width has to rise this far above the grasp threshold to reopen a closed hand, so a
# width that hovers around the threshold does not make the hand chatter.
GRIPPER_HYSTERESIS_M = 0.005
# A grasp closes towards zero width; an outer tolerance wider than the hand counts any object
# between the fingers as grasped, so the hand keeps its force on whatever it closed on.
GRASP_EPSILON_OUTER_M = 1.0

# What franky raises: franky.Exception covers libfranka's errors (network, command, control,
# realtime, ...), GripperException comes from the hand, and a RuntimeError ("Net Exception") is a
# network error of libfranka's Poco that gets through once the connection is lost.
FRANKY_ERRORS = (franky.Exception, franky.GripperException, RuntimeError)


class FrankyRobot(Robot):
    def __init__(
        self,
        host: str,
        dynamics_factor: float = 0.1,
        gripper_speed: float = 0.1,
        gripper_force: float = 20.0,
        grasp_threshold: float = 0.04,
        enforce_realtime: bool = True,
    ) -> None:
        """`dynamics_factor` scales franky's velocity, acceleration and jerk limits; widths are in
        metres, the gripper speed in m/s and its force in N. `enforce_realtime=False` lets libfranka
        run on a kernel without realtime scheduling (franky-sim, a desktop); a real arm needs it."""
        self.host = host
        self.dynamics_factor = dynamics_factor
        self.gripper_speed = gripper_speed
        self.gripper_force = gripper_force
        self.grasp_threshold = grasp_threshold
        self.enforce_realtime = enforce_realtime
        # The running gripper command goes before the gripper, here (attributes are released in
        # this order when the object goes) and in _release: see there.
        self._gripper_command: franky.BoolFuture | None = None
        self._gripper: franky.Gripper | None = None
        self._robot: franky.Robot | None = None
        self._gripper_max_width = 0.0
        # None until the first gripper command: then either state is a change and gets sent.
        self._gripper_closed: bool | None = None

    def connect(self) -> None:
        self._release()
        try:
            with socket.create_connection((self.host, FCI_COMMAND_PORT), CONNECT_TIMEOUT_S):
                pass
        except OSError as error:
            raise RobotError(
                f"robot {self.host}: cannot connect (port {FCI_COMMAND_PORT}: {error})"
            ) from error
        realtime_config = (
            franky.RealtimeConfig.Enforce if self.enforce_realtime else franky.RealtimeConfig.Ignore
        )
        try:
            robot = franky.Robot(self.host, realtime_config=realtime_config)
            robot.relative_dynamics_factor = self.dynamics_factor
            gripper = franky.Gripper(self.host)
            self._gripper_max_width = gripper.max_width
        except FRANKY_ERRORS as error:
            raise RobotError(f"robot {self.host}: cannot connect ({error})") from error
        self._robot, self._gripper = robot, gripper
        self._gripper_closed = None

    def disconnect(self) -> None:
        try:
            self.hold()
        finally:
            self._release()

    def get_state(self) -> RobotState:
        robot, gripper = self._connected()
        try:
            state = robot.state
            stamp = time.time()
            # O_T_EE is what the motion generator last commanded on franky-sim, not where the arm
            # is: the forward kinematics of the measured joints is the measured pose everywhere.
            ee_pose = robot.model.pose(franky.Frame.EndEffector, state).matrix
            gripper_width = gripper.width
        except FRANKY_ERRORS as error:
            raise RobotError(f"robot {self.host}: {error}") from error
        # franky's Errors has no truth value in Python; its text lists the active errors, "[]" none.
        errors = str(state.current_errors)
        return RobotState(
            stamp=stamp,
            ee_pos=ee_pose[:3, 3].copy(),
            ee_rot=ee_pose[:3, :3].copy(),
            gripper_width=float(gripper_width),
            joint_positions=np.array(state.q, dtype=np.float64),
            error=None if errors == "[]" else errors,
        )

    def send_target(self, position: np.ndarray, rotation: np.ndarray, gripper_width: float) -> None:
        robot, gripper = self._connected()
        target = np.eye(4)
        target[:3, :3] = rotation
        target[:3, 3] = position
        # return_when_finished=False keeps the control loop running on the reached target, so the
        # next target replaces this motion in the running loop instead of starting a new one.
        motion = franky.CartesianMotion(
            franky.Affine(target), franky.ReferenceType.Absolute, return_when_finished=False
        )
        try:
            # Raises, once, whatever aborted the previous motion (a reflex, a lost connection).
            robot.move(motion, asynchronous=True)
            self._drive_gripper(gripper, gripper_width)
        except FRANKY_ERRORS as error:
            raise RobotError(f"robot {self.host}: {error}") from error

    def hold(self) -> None:
        if self._robot is None:
            return  # nothing streams without a connection
        try:
            # Without a running motion the arm already stands still: after an abort (whose error
            # the next send_target raises) or a previous hold.
            if self._robot.is_in_control:
                # Replaces the streamed motion and decelerates to rest within the dynamics limits.
                self._robot.move(franky.CartesianStopMotion(), asynchronous=False)
        except FRANKY_ERRORS as error:
            raise RobotError(f"robot {self.host}: {error}") from error

    def recover(self) -> None:
        robot, _ = self._connected()
        # franky keeps the exception that aborted the last motion until a move or a poll takes it;
        # it belongs to the error cleared here and must not fail the next send_target.
        with contextlib.suppress(*FRANKY_ERRORS):
            robot.poll_motion()
        try:
            if not robot.recover_from_errors():
                errors = robot.state.current_errors
                raise RobotError(f"robot {self.host}: error recovery failed, errors left: {errors}")
        except FRANKY_ERRORS as error:
            raise RobotError(f"robot {self.host}: {error}") from error

    def _release(self) -> None:
        """Closes the connections: franky closes them when its objects go, it has no close()."""
        # The command first: a franky.Gripper that goes while a BoolFuture still refers to its
        # running command frees the connection under that command's thread (a segfault, seen with
        # the connection lost mid-command). As the last owner, the gripper waits for the thread
        # instead: for the rest of the command, or libfranka's 60 s timeout if the connection died.
        self._gripper_command = None
        self._gripper = None
        self._robot = None

    def _connected(self) -> tuple[franky.Robot, franky.Gripper]:
        if self._robot is None or self._gripper is None:
            raise RobotError(f"robot {self.host}: not connected")
        return self._robot, self._gripper

    def _drive_gripper(self, gripper: franky.Gripper, width: float) -> None:
        if self._gripper_command is not None:
            if not self._gripper_command.wait(0.0):
                # franky's *_async blocks until the previous gripper command has finished; a state
                # change asked for meanwhile is sent on a later cycle.
                return
            finished, self._gripper_command = self._gripper_command, None
            finished.get()  # raises what made that command fail
        reopen_above = self.grasp_threshold + (
            GRIPPER_HYSTERESIS_M if self._gripper_closed else 0.0
        )
        close = width < reopen_above
        if close == self._gripper_closed:
            return
        if close:
            self._gripper_command = gripper.grasp_async(
                width=0.0,
                speed=self.gripper_speed,
                force=self.gripper_force,
                epsilon_outer=GRASP_EPSILON_OUTER_M,
            )
        else:
            self._gripper_command = gripper.move_async(
                width=min(width, self._gripper_max_width), speed=self.gripper_speed
            )
        self._gripper_closed = close
