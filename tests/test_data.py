"""Data sets: the digits split, MNIST from a local npz (written here), the teacher-student regression."""

import numpy as np
import pytest

from fpsim.sim.data import load_data


def test_digits_split_is_fixed_stratified_and_standardised():
    first, second = load_data("digits"), load_data({"name": "digits"})
    assert first.x_train.shape == (1437, 64) and first.x_test.shape == (360, 64)
    assert np.array_equal(first.x_train, second.x_train) and np.array_equal(first.y_test, second.y_test)
    assert first.task == "classification" and first.outputs == 10 and first.inputs == 64
    counts = np.bincount(first.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: about 36 test images per class
    varying = first.x_train.std(axis=0) > 0
    np.testing.assert_allclose(first.x_train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(first.x_train.std(axis=0)[varying], 1, rtol=1e-12)


def _write_mnist(path, n_train=30, n_test=10, **replace):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, size=n_train, dtype=np.uint8),
              "x_test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, size=n_test, dtype=np.uint8)}
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_mnist_from_a_local_keras_layout_npz(tmp_path):
    path = tmp_path / "mnist.npz"
    arrays = _write_mnist(path)
    data = load_data(f"mnist:{path}")
    assert data.x_train.shape == (30, 784) and data.x_test.shape == (10, 784) and data.outputs == 10
    assert np.array_equal(data.y_train, arrays["y_train"])
    scaled = arrays["x_train"].reshape(30, -1) / 255.0
    std = scaled.std(axis=0)
    std[std == 0] = 1
    np.testing.assert_allclose(data.x_train, (scaled - scaled.mean(axis=0)) / std)
    assert np.array_equal(load_data({"name": "mnist", "path": str(path)}).x_test, data.x_test)


def test_mnist_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="not found.*never downloads"):
        load_data(f"mnist:{tmp_path / 'absent.npz'}")
    with pytest.raises(ValueError, match="needs the path"):
        load_data("mnist")
    path = tmp_path / "no_labels.npz"
    _write_mnist(path, y_test=None)
    with pytest.raises(ValueError, match="lacks y_test"):
        load_data(f"mnist:{path}")
    path = tmp_path / "short.npz"
    _write_mnist(path, y_train=np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="one label per image"):
        load_data(f"mnist:{path}")
    path = tmp_path / "labels.npz"
    _write_mnist(path, y_test=np.full(10, 12, dtype=np.uint8))
    with pytest.raises(ValueError, match="labels 0..9"):
        load_data(f"mnist:{path}")
    path = tmp_path / "garbage.npz"
    path.write_text("not a zip file")
    with pytest.raises(ValueError, match="cannot read"):
        load_data(f"mnist:{path}")


def test_teacher_student_regression():
    data = load_data({"name": "teacher", "train": 256, "test": 64, "outputs": 3, "noise": 0.0})
    assert data.task == "regression" and data.x_train.shape == (256, 32) and data.y_test.shape == (64, 3)
    again = load_data({"name": "teacher", "train": 256, "test": 64, "outputs": 3, "noise": 0.0})
    assert np.array_equal(data.y_train, again.y_train)
    assert 0.05 < data.y_train.std() < 5  # targets of order 1
    with pytest.raises(ValueError, match="noise"):
        load_data({"name": "teacher", "noise": -1.0})


@pytest.mark.parametrize("spec, error, message", [
    ("cifar", ValueError, "digits, mnist, teacher"),
    ("digits:/tmp/x", ValueError, "takes no path"),
    ({"name": "digits", "path": "x"}, ValueError, "unknown option"),
    ({"name": "teacher", "depth": 3}, ValueError, "unknown option"),
    (42, TypeError, "data must be"),
])
def test_bad_data_specs(spec, error, message):
    with pytest.raises(error, match=message):
        load_data(spec)
