"""SPEC section 7: loaders read real local formats, say where they looked, never download."""

import gzip
import pickle

import numpy as np
import pytest

from zoo.data import ArrayBatches, DatasetNotFoundError, load_cifar, load_dataset, load_fashion_mnist, read_idx
from zoo.data.datasets import FASHION_FILES


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype("uint8").tobytes())


def fake_fashion(folder, n_train=12, n_test=5):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28)), "y_train": rng.integers(0, 10, n_train),
        "x_test": rng.integers(0, 256, (n_test, 28, 28)), "y_test": rng.integers(0, 10, n_test),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in FASHION_FILES.items():
        write_idx(folder / f"{stem}.gz", arrays[key])
    return arrays


def test_fashion_mnist_reads_idx_files_from_a_path(tmp_path):
    arrays = fake_fashion(tmp_path / "fm")
    data = load_fashion_mnist(path=tmp_path / "fm")
    assert data.x_train.shape == (12, 28, 28, 1) and data.x_train.dtype == np.uint8
    np.testing.assert_array_equal(data.x_test[..., 0], arrays["x_test"])
    np.testing.assert_array_equal(data.y_train, arrays["y_train"])
    assert data.num_classes == 10


def test_fashion_mnist_from_zoo_data_dir(tmp_path, monkeypatch):
    fake_fashion(tmp_path / "fashion-mnist")
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path))
    assert load_fashion_mnist().source == str(tmp_path / "fashion-mnist")


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("zoo.data.datasets.DEBIAN_FASHION_MNIST", str(tmp_path / "nowhere"))
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError) as err:
        load_fashion_mnist(path=tmp_path / "empty")
    message = str(err.value)
    assert str(tmp_path / "empty") in message and "nowhere" in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=True" in message
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py.*never downloads"):
        load_cifar(10, path=tmp_path / "empty")


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "bad.gz"
    write_idx(path, np.zeros((4, 3), "uint8"))
    raw = gzip.open(path).read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_cifar10_pickle_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (3, 3072)).astype("uint8"), b"labels": [1, 2, 3], b"filenames": [b"a", b"b", b"c"]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    data = load_cifar(10, path=folder)
    assert data.x_train.shape == (15, 32, 32, 3) and data.x_test.shape == (3, 32, 32, 3)
    # NCHW rows -> NHWC images
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"]
    np.testing.assert_array_equal(data.x_test[0, :, :, 0], raw[0, :1024].reshape(32, 32))


def test_cifar_loader_refuses_code_in_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": np.zeros((1, 3072), "uint8"), "fine_labels": [0], "evil": print}, f)
    with pytest.raises(pickle.UnpicklingError, match="Refusing"):
        load_cifar(100, path=folder)


def test_digits_are_embedded_and_split():
    data = load_dataset("digits")
    assert data.x_train.shape[1:] == (8, 8, 1) and len(data.x_train) + len(data.x_test) == 1797
    assert data.x_train.max() == 255


def test_image_folder(tmp_path):
    import keras

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            keras.utils.save_img(tmp_path / split / cls / "0.png", np.full((6, 6, 3), 100 if cls == "cat" else 200, "uint8"))
    data = load_dataset("image_folder", path=tmp_path, image_size=(6, 6))
    assert data.x_train.shape == (2, 6, 6, 3) and list(data.y_train) == [0, 1]


def test_unknown_dataset_suggests_closest():
    with pytest.raises(ValueError, match="fashion_mnist"):
        load_dataset("fashion_mnst")


def test_batches_are_a_function_of_seed_and_epoch():
    x = np.arange(20 * 4 * 4 * 1, dtype="uint8").reshape(20, 4, 4, 1)
    y = np.arange(20)
    a = ArrayBatches(x, y, 8, shuffle=True, seed=1, augment="crop_flip", pad=1)
    b = ArrayBatches(x, y, 8, shuffle=True, seed=1, augment="crop_flip", pad=1)
    assert len(a) == 3
    b.set_epoch(0)
    np.testing.assert_array_equal(a[1][0], b[1][0])
    first = a[0][1].copy()
    a.set_epoch(1)
    assert not np.array_equal(a[0][1], first)
    b.set_epoch(1)
    np.testing.assert_array_equal(a[2][0], b[2][0])
    assert a[0][0].shape == (8, 4, 4, 1)


def _images(n=8, size=12, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    # smooth images (a gradient plus noise), so the geometric and colour operations all change them
    ramp = np.linspace(20, 230, size)[None, :, None, None] + np.linspace(0, 20, size)[None, None, :, None]
    x = ramp + rng.normal(0, 15, (n, size, size, channels))
    return np.clip(x, 0, 255).astype("uint8"), np.arange(n)


@pytest.mark.parametrize("channels", [3, 1])
def test_randaugment_is_keras_own_seeded_by_seed_epoch_and_batch(channels):
    x, y = _images(channels=channels)
    make = lambda augment="randaugment", seed=3: ArrayBatches(x, y, 4, shuffle=True, seed=seed, augment=augment, pad=2)  # noqa: E731
    a, b = make(), make()
    first = a[0][0]
    assert first.dtype == np.uint8 and first.shape == (4, 12, 12, channels)  # uint8: inside 0..255
    # the same seed, epoch and batch give the same images, whatever was drawn before
    a[1]
    np.testing.assert_array_equal(a[0][0], first)
    np.testing.assert_array_equal(b[0][0], first)
    b.set_epoch(1)
    a.set_epoch(1)
    np.testing.assert_array_equal(a[1][0], b[1][0])
    # RandAugment changed the images beyond the crop and flip that precede it (same generator)
    cropped = make("crop_flip")[0][0]
    assert np.abs(first.astype(int) - cropped.astype(int)).mean() > 1.0
    # and another seed gives other images
    assert not np.array_equal(make(seed=4)[0][0], first)


def test_augmentation_refuses_what_it_cannot_augment():
    seq = np.zeros((6, 40, 1), "float32")
    with pytest.raises(ValueError, match=r"augmentation needs images \(N, H, W, C\)"):
        ArrayBatches(seq, np.arange(6), 2, augment="crop_flip")
    with pytest.raises(ValueError, match="needs uint8 images"):
        ArrayBatches(np.zeros((6, 8, 8, 3), "float32"), np.arange(6), 2, augment="randaugment")
    with pytest.raises(ValueError, match="allowed: None, 'crop_flip', 'crop', 'randaugment'"):
        ArrayBatches(np.zeros((6, 8, 8, 3), "uint8"), np.arange(6), 2, augment="autoaugment")


def test_the_zoo_never_imports_keras_cv():
    import ast
    from pathlib import Path

    import zoo

    for path in Path(zoo.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "keras_cv" for n in names), f"{path} imports keras_cv"
