import numpy as np
import pytest

from onedp_control.geometry import (
    matrix_from_quat,
    matrix_from_rot6d,
    matrix_from_rotvec,
    quat_from_matrix,
    rot6d_from_matrix,
    rotation_z,
    rotvec_from_matrix,
    wrap_angle,
    yaw_of,
)


def random_rotations(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return matrix_from_quat(q / np.linalg.norm(q, axis=1, keepdims=True))


def test_rot6d_round_trip_batched():
    rotations = random_rotations(50)
    back = matrix_from_rot6d(rot6d_from_matrix(rotations))
    np.testing.assert_allclose(back, rotations, atol=1e-12)


def test_rot6d_of_noisy_vector_is_a_rotation():
    r6 = rot6d_from_matrix(random_rotations(10)) + np.random.default_rng(1).normal(0, 0.1, (10, 6))
    rotations = matrix_from_rot6d(r6)
    eye = np.broadcast_to(np.eye(3), rotations.shape)
    np.testing.assert_allclose(rotations @ np.swapaxes(rotations, 1, 2), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-12)


@pytest.mark.parametrize("index", range(20))
def test_quaternion_and_rotvec_round_trips(index):
    rotation = random_rotations(20, seed=3)[index]
    np.testing.assert_allclose(matrix_from_quat(quat_from_matrix(rotation)), rotation, atol=1e-12)
    np.testing.assert_allclose(
        matrix_from_rotvec(rotvec_from_matrix(rotation)), rotation, atol=1e-9
    )


def test_yaw_and_wrap():
    assert yaw_of(rotation_z(0.7)) == pytest.approx(0.7)
    assert wrap_angle(3 * np.pi / 2) == pytest.approx(-np.pi / 2)
    assert np.allclose(rotvec_from_matrix(np.eye(3)), 0.0)
