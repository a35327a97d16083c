"""Data loaders: real data from local files, nothing downloaded unless the user allows it.

Every loader returns a `Dataset`: numpy arrays, channels last, images as uint8 (or float32
sequences), integer labels, plus the facts a recipe needs (classes, shape, normalisation).

Where each looks (first hit wins):
    fashion_mnist  `path`, $ZOO_DATA_DIR/fashion-mnist, /usr/share/datasets/fashion-mnist
                   (Debian package dataset-fashion-mnist), then keras.datasets if
                   `download=True` (the only loader that can reach the network).
    mnist1d        generated locally by the `mnist1d` package (4000 / 1000 sequences of 40).
    digits         scikit-learn's 1797 8x8 digits, shipped in its wheel (the embedded default).
    cifar10/100    `path` or $ZOO_DATA_DIR/cifar-10-batches-py | cifar-100-python (pickle batches
                   of the official python release, read without unpickling code objects).
    image_folder   `path`/<split>/<class>/*.png|jpg (Keras' image_dataset_from_directory layout).
    time_invariant, time_variant
                   generated (zoo.data.synthetic.sign_of_weighted_sum): sequences of `length`
                   steps, labelled by a rule that ignores / depends on time.
"""

import dataclasses
import gzip
import os
import pickle
from pathlib import Path

import numpy as np

from zoo.errors import DatasetNotFoundError, UnknownNameError  # noqa: F401
from zoo.preprocessing import NORMALIZATION, preprocessing_config

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def normalize_images(x, mean, std):
    """Images with 0-255 values (uint8 or float) -> float32 (x / 255 - mean) / std, per channel."""
    x = np.asarray(x, np.float32) / np.float32(255.0)
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype("float32")


@dataclasses.dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    mean: tuple = (0.0,)
    std: tuple = (1.0,)

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])

    @property
    def preprocessing(self):
        """What `normalize` does, as a model's preprocessing config (zoo.preprocessing)."""
        if self.x_train.dtype == np.uint8:
            return preprocessing_config(1 / 255, self.mean, self.std)
        return preprocessing_config(1.0, (0.0,), (1.0,))

    def normalize(self, x):
        """uint8 images -> float32 (x / 255 - mean) / std; float data unchanged but cast."""
        x = np.asarray(x)
        if x.dtype == np.uint8:
            return normalize_images(x, self.mean, self.std)
        return x.astype("float32")

    def select_classes(self, classes):
        """Only the examples of `classes` (label values), relabelled 0..len(classes)-1 in the
        order given: e.g. a 5-class task to fine-tune a 10-class model on."""
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c < self.num_classes]
        if not classes or bad or len(set(classes)) != len(classes):
            raise ValueError(
                f"Received classes={classes}; expected distinct labels of {self.name} in [0, {self.num_classes - 1}]."
            )
        lookup = np.full(self.num_classes, -1, "int32")
        lookup[classes] = np.arange(len(classes), dtype="int32")
        keep_train, keep_test = lookup[self.y_train] >= 0, lookup[self.y_test] >= 0
        return dataclasses.replace(
            self, x_train=self.x_train[keep_train], y_train=lookup[self.y_train[keep_train]],
            x_test=self.x_test[keep_test], y_test=lookup[self.y_test[keep_test]], num_classes=len(classes),
        )

    def subset(self, train=None, test=None, seed=0):
        """A class-balanced-by-chance random subset (fixed by `seed`), for quick runs and tests."""
        rng = np.random.default_rng(seed)
        out = dataclasses.replace(self)
        if train is not None and train < len(self.x_train):
            idx = np.sort(rng.permutation(len(self.x_train))[:train])
            out.x_train, out.y_train = self.x_train[idx], self.y_train[idx]
        if test is not None and test < len(self.x_test):
            idx = np.sort(rng.permutation(len(self.x_test))[:test])
            out.x_test, out.y_test = self.x_test[idx], self.y_test[idx]
        return out


def _candidates(path, subdir):
    out = []
    if path:
        out.append(Path(path))
    if os.environ.get("ZOO_DATA_DIR"):
        out.append(Path(os.environ["ZOO_DATA_DIR"]) / subdir)
    return out


def read_idx(path):
    """An IDX file (optionally .gz), as in MNIST / Fashion-MNIST: magic, dims, then raw uint8."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number).")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {body.size} bytes of data.")
    return body.reshape(dims)


FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find_idx(folder, stem):
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(path=None, download=False):
    """Fashion-MNIST, 60k/10k 28x28x1 uint8 images, 10 classes (Xiao et al. 2017)."""
    folders = _candidates(path, "fashion-mnist") + [Path(DEBIAN_FASHION_MNIST)]
    for folder in folders:
        files = {k: _find_idx(folder, stem) for k, stem in FASHION_FILES.items()}
        if all(files.values()):
            arrays = {k: read_idx(f) for k, f in files.items()}
            return Dataset(
                "fashion_mnist",
                arrays["x_train"][..., None], arrays["y_train"].astype("int32"),
                arrays["x_test"][..., None], arrays["y_test"].astype("int32"),
                10, str(folder), *NORMALIZATION["fashion_mnist"],
            )
    if download:
        import keras

        (xtr, ytr), (xte, yte) = keras.datasets.fashion_mnist.load_data()
        return Dataset("fashion_mnist", xtr[..., None], ytr.astype("int32"), xte[..., None], yte.astype("int32"),
                       10, "keras.datasets", *NORMALIZATION["fashion_mnist"])
    raise DatasetNotFoundError(
        "Fashion-MNIST not found. Looked for the four IDX files (train-images-idx3-ubyte[.gz], ...) in: "
        + ", ".join(str(f) for f in folders)
        + ". Get it with `apt-get install dataset-fashion-mnist` (Debian), put the files in "
        "$ZOO_DATA_DIR/fashion-mnist, pass path=..., or allow download=True (keras.datasets)."
    )


def load_mnist1d(seed=42):
    """MNIST-1D (Greydanus 2020): 4000/1000 sequences of 40 steps x 1, 10 classes, generated."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise DatasetNotFoundError(
            "MNIST-1D needs the `mnist1d` package, which generates it locally: pip install mnist1d"
        ) from err
    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    return Dataset(
        "mnist1d",
        data["x"].astype("float32")[..., None], np.asarray(data["y"]).astype("int32"),
        data["x_test"].astype("float32")[..., None], np.asarray(data["y_test"]).astype("int32"),
        10, "mnist1d.make_dataset (seed %d)" % seed,
    )


def load_digits(test_fraction=0.2, seed=0):
    """scikit-learn's 1797 8x8 digits (values 0-16, rescaled to uint8), split by `seed`."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as err:
        raise DatasetNotFoundError("The 8x8 digits ship with scikit-learn: pip install scikit-learn") from err
    bunch = sk_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype("uint8")[..., None]
    y = bunch.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(round(len(x) * (1 - test_fraction)))
    tr, te = order[:cut], order[cut:]
    return Dataset("digits", x[tr], y[tr], x[te], y[te], 10, "sklearn.datasets.load_digits", *NORMALIZATION["digits"])


def _unpickle_batch(path):
    with open(path, "rb") as f:
        return _SafeUnpickler(f, encoding="bytes").load()


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR batches are dicts of bytes, lists and numpy arrays: allow only those classes."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("builtins", "bytes")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Refusing to load {module}.{name} from a CIFAR batch file.")


def _cifar_array(batch, key):
    value = batch.get(key.encode()) if key.encode() in batch else batch.get(key)
    return np.asarray(value)


def load_cifar(num_classes=10, path=None):
    """CIFAR-10 / CIFAR-100 from the official python pickle batches in a local folder."""
    subdir = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    folders = _candidates(path, subdir)
    for folder in folders:
        if num_classes == 10:
            train = [folder / f"data_batch_{i}" for i in range(1, 6)]
            test, label_key = folder / "test_batch", "labels"
        else:
            train, test, label_key = [folder / "train"], folder / "test", "fine_labels"
        if all(p.is_file() for p in train) and test.is_file():
            def read(paths):
                xs, ys = [], []
                for p in paths:
                    b = _unpickle_batch(p)
                    xs.append(_cifar_array(b, "data").reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                    ys.append(_cifar_array(b, label_key))
                return np.concatenate(xs).astype("uint8"), np.concatenate(ys).astype("int32")

            xtr, ytr = read(train)
            xte, yte = read([test])
            mean, std = NORMALIZATION["cifar10"]  # CIFAR-100 is normalised as CIFAR-10
            return Dataset(f"cifar{num_classes}", xtr, ytr, xte, yte, num_classes, str(folder), mean=mean, std=std)
    raise DatasetNotFoundError(
        f"CIFAR-{num_classes} not found. Looked in: {', '.join(str(f) for f in folders) or '(no path given)'}. "
        f"Download the python version from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it to "
        f"$ZOO_DATA_DIR/{subdir} or pass path=... (this loader never downloads)."
    )


def load_image_folder(path, image_size=(32, 32), color_mode="rgb"):
    """Images in `path`/train/<class>/ and `path`/test/<class>/ (class names sorted)."""
    import keras

    root = Path(path) if path else None
    if root is None or not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DatasetNotFoundError(f"An image folder needs {path}/train/<class>/*.png and {path}/test/<class>/*.png.")

    def read(split):
        classes = sorted(d.name for d in (root / split).iterdir() if d.is_dir())
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for f in sorted((root / split / cls).iterdir()):
                if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
                    img = keras.utils.load_img(f, target_size=image_size, color_mode=color_mode)
                    xs.append(np.asarray(keras.utils.img_to_array(img), dtype="uint8"))
                    ys.append(label)
        return np.stack(xs), np.asarray(ys, "int32"), classes

    xtr, ytr, classes = read("train")
    xte, yte, test_classes = read("test")
    if classes != test_classes:
        raise ValueError(f"train classes {classes} differ from test classes {test_classes} in {root}.")
    return Dataset("image_folder", xtr, ytr, xte, yte, len(classes), str(root), *NORMALIZATION["image_folder"])


LOADERS = {
    "fashion_mnist": load_fashion_mnist,
    "mnist1d": load_mnist1d,
    "digits": load_digits,
    "cifar10": lambda path=None: load_cifar(10, path),
    "cifar100": lambda path=None: load_cifar(100, path),
    "image_folder": load_image_folder,
}


def load_time_task(rule, length=64, train=8000, test=2000, seed=0):
    """One of the generated time-invariant / time-variant sequence tasks (2 classes)."""
    from zoo.data.synthetic import sign_of_weighted_sum

    x, y = sign_of_weighted_sum(int(train) + int(test), length, rule, seed=seed)
    return Dataset(rule, x[:train], y[:train], x[train:], y[train:], 2,
                   f"zoo.data.synthetic.sign_of_weighted_sum(length={length}, seed={seed})")


LOADERS["time_invariant"] = lambda **kw: load_time_task("time_invariant", **kw)
LOADERS["time_variant"] = lambda **kw: load_time_task("time_variant", **kw)


def load_dataset(name, **kwargs):
    """Load a data set by name (see LOADERS), e.g. load_dataset("fashion_mnist", path=...)."""
    if name not in LOADERS:
        raise UnknownNameError("dataset", name, LOADERS)
    return LOADERS[name](**kwargs)
