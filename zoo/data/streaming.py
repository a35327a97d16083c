"""Streaming input: image data sets that do not fit in memory, read through grain.

    from zoo.data import StreamingDataset, write_array_record
    data = StreamingDataset.image_folder("/data/images", image_size=(32, 32))  # <split>/<class>/*.png
    data = StreamingDataset.array_record("/data/records")        # train.array_record, test.array_record
    train = data.train_batches(128, seed=0, augment="crop_flip", workers=4)
    model.fit(train, epochs=10, callbacks=[zoo.data.EpochSetter(train)], shuffle=False)

Only the index (file paths or record offsets) is in memory: a batch reads and decodes its own
images. grain does the reading (`grain.MapDataset`: source, per-epoch shuffle, decoding,
seeded augmentation, batching, all random access) in a `keras.utils.PyDataset`, so `fit`,
`evaluate` and `predict` take it on every backend; `workers` threads read the next batches
while one trains. The batch at (epoch, index) is a function of the seed,
the epoch and the index alone (grain's shuffle and `random_map` seeds come from them), so the
iterator state of a run is (epoch, batches done): a checkpoint that records it resumes with the
very batches an uninterrupted run sees (recipes.train's `checkpoint_every_steps`).
`process_index` / `process_count` give each process of a data-parallel run its own rows of
every batch (it reads only those images).

The record format is ArrayRecord (`array_record`, grain's own random-access format): one
record per example, a 4-byte little-endian label then the image encoded as PNG, and a
`meta.json` beside the files with the classes and the image shape (`write_array_record`).
"""

import dataclasses
import io
import json
import os
from pathlib import Path

import keras
import numpy as np

from zoo.data.datasets import normalize_images
from zoo.data.pipeline import check_process_part
from zoo.errors import DatasetNotFoundError, check_choice, check_range
from zoo.preprocessing import NORMALIZATION, preprocessing_config

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
AUGMENTS = (None, "crop", "crop_flip")
COLOR_MODES = {"rgb": ("RGB", 3), "grayscale": ("L", 1)}
META = "meta.json"


def _grain():
    try:
        import grain
    except ImportError as e:  # an optional dependency: `pip install grain` (the extra `stream`)
        raise ImportError("Streaming input needs grain: pip install grain (or the zoo's extra: pip install 'zoo[stream]').") from e
    return grain


# === Decoding ===
def decode_image(data, image_size=None, color_mode="rgb"):
    """Encoded image bytes (PNG, JPEG, BMP) -> uint8 array (H, W, C), resized to `image_size`."""
    from PIL import Image

    mode, _ = COLOR_MODES[color_mode]
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert(mode)
        if image_size is not None and img.size != (image_size[1], image_size[0]):
            img = img.resize((image_size[1], image_size[0]), Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def encode_example(image, label):
    """One ArrayRecord record: the label as 4 bytes (int32, little endian), then the PNG."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"Received an image of dtype {image.dtype} and shape {image.shape}; records hold uint8 "
                         "images (H, W, 1) or (H, W, 3).")
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return np.int32(label).astype("<i4").tobytes() + buffer.getvalue()


class Decode:
    """grain map: {"data": bytes, "label": int} -> {"image": uint8 (H, W, C), "label": int32}."""

    def __init__(self, image_size, color_mode):
        self.image_size, self.color_mode = tuple(image_size), color_mode

    def __call__(self, example):
        return {"image": decode_image(example["data"], self.image_size, self.color_mode),
                "label": np.int32(example["label"])}


class CropFlip:
    """grain random_map: zero-pad by `pad`, crop back at a random offset, flip half the images
    (as zoo.data.random_crop_flip does to a batch), drawn from grain's per-example generator."""

    def __init__(self, pad, flip):
        self.pad, self.flip = int(pad), bool(flip)

    def __call__(self, example, rng):
        image = example["image"]
        h, w, _ = image.shape
        if self.pad:
            padded = np.pad(image, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)))
            dy, dx = rng.integers(0, 2 * self.pad + 1, 2)
            image = padded[dy:dy + h, dx:dx + w]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": np.ascontiguousarray(image), "label": example["label"]}


# === Sources: random access, only an index in memory ===
class ImageFolderSource:
    """grain data source over `root`/<class>/<image>: the sorted file paths and their labels.

    Classes are the sorted sub-folder names (or `classes`, to fix the order across splits)."""

    def __init__(self, root, classes=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"Image folder {str(self.root)!r} does not exist; it needs <class>/<image> files.")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.classes = list(classes) if classes is not None else found
        if sorted(self.classes) != found:
            raise ValueError(f"Classes {found} in {str(self.root)!r} differ from the expected {sorted(self.classes)}.")
        paths, labels = [], []
        for label, name in enumerate(self.classes):
            files = sorted(f.name for f in (self.root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            paths += [f"{name}/{f}" for f in files]
            labels += [label] * len(files)
        if not paths:
            raise DatasetNotFoundError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {str(self.root)!r}/<class>/.")
        self._paths = np.asarray(paths)  # one array of strings, not a list of objects
        self._labels = np.asarray(labels, np.int32)

    def __len__(self):
        return len(self._paths)

    def __getitem__(self, index):
        return {"data": (self.root / str(self._paths[index])).read_bytes(), "label": int(self._labels[index])}

    def __repr__(self):
        return f"ImageFolderSource({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes)"


class ArrayRecordSource:
    """grain's ArrayRecordDataSource over `paths`, each record split into label and image bytes."""

    def __init__(self, paths):
        self.paths = [str(p) for p in paths]
        self._source = _grain().sources.ArrayRecordDataSource(self.paths)

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        record = self._source[index]
        return {"data": record[4:], "label": int(np.frombuffer(record[:4], "<i4")[0])}

    def __repr__(self):
        return f"ArrayRecordSource({self.paths}, {len(self)} records)"


def write_array_record(folder, split, images, labels, classes=None):
    """Write `folder`/`split`.array_record (one record per image) and update `folder`/meta.json.

    `images` is any iterable of uint8 (H, W, C) arrays of one shape (a generator streams them),
    `labels` the matching integers. The file is written under a temporary name and renamed
    when complete, so a killed writer leaves no half-written split. Returns the file's path."""
    from array_record.python.array_record_module import ArrayRecordWriter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.array_record"
    tmp = folder / f".{split}.array_record.tmp"
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    count, shape, top = 0, None, -1
    try:
        for image, label in zip(images, labels):
            image = np.asarray(image)
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise ValueError(f"Received images of shapes {shape} and {image.shape}; one split holds one shape.")
            writer.write(encode_example(image, label))
            count, top = count + 1, max(top, int(label))
    finally:
        writer.close()
    if not count:
        tmp.unlink()
        raise ValueError(f"Received no images for split {split!r}.")
    os.replace(tmp, path)
    meta_path = folder / META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.setdefault("splits", {})[split] = count
    meta["image_shape"] = list(shape)
    meta["classes"] = list(classes) if classes is not None else meta.get("classes") or [str(i) for i in range(top + 1)]
    tmp_meta = folder / f".{META}.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, meta_path)
    return path


# === Batches for fit ===
def _epoch_seed(seed, epoch, stream):
    return int(np.random.SeedSequence([int(seed), int(epoch), stream]).generate_state(1)[0])


class StreamingBatches(keras.utils.PyDataset):
    """Normalised float32 batches of a random-access source, read and decoded per batch by grain.

    Args:
        source: a grain data source of {"data": encoded image bytes, "label": int}
            (`ImageFolderSource`, `ArrayRecordSource`).
        batch_size: images a batch; the last batch of an epoch may be smaller unless `drop_last`.
        image_size, color_mode: decoded size (H, W) and "rgb" or "grayscale".
        normalize: function applied to each batch of uint8 images (e.g. `Dataset.normalize`).
        shuffle, seed: a new order each epoch, from (seed, epoch).
        augment: None, "crop" or "crop_flip" (per image, from (seed, epoch, index)); pad: pixels.
        process_index, process_count: this process's part of each batch (data-parallel training
            over processes): rows [i * b, (i + 1) * b) of every global batch of `batch_size`
            rows, b = batch_size / process_count; it reads only those images. The parts of a
            batch together are the batch one process would read. Needs drop_last with more
            than one process (every part the same size).
        workers: threads that read and decode the next `workers` batches while the current one
            trains (0: read each batch when asked for it).

    `set_epoch(e)` (zoo.data.EpochSetter calls it) selects the epoch; `grain_dataset(e)` is the
    `grain.MapDataset` of that epoch's batches, for grain's own iterators and loaders.

    The read-ahead is this class's own, not Keras' PyDataset workers: those fetch batches on
    their own schedule, possibly before `on_epoch_begin` moves the data set to the next epoch,
    so what they return would depend on timing. Here a batch is looked up by (epoch, index).
    """

    def __init__(self, source, batch_size, image_size, color_mode="rgb", normalize=None, shuffle=False, seed=0,
                 augment=None, pad=4, drop_last=False, process_index=0, process_count=1, workers=2):
        super().__init__()  # one Keras worker: batches are asked for in order, after set_epoch
        self.batch_size = int(check_range("batch_size", batch_size, low=1, integer=True))
        check_choice("augment", augment, AUGMENTS)
        check_choice("color_mode", color_mode, tuple(COLOR_MODES))
        self.process_index, self.process_count = check_process_part(process_index, process_count, self.batch_size,
                                                                    drop_last)
        self.read_ahead = int(check_range("workers", workers, low=0, integer=True))
        self.source, self.normalize, self.augment = source, normalize, augment
        self.shuffle, self.seed, self.pad, self.drop_last = bool(shuffle), int(seed), int(pad), bool(drop_last)
        self.decode = Decode(image_size, color_mode)
        self._base = _grain().MapDataset.source(source)
        if len(self._base) < (self.batch_size if drop_last else 1):
            raise ValueError(f"Received {len(self._base)} examples for batch_size={self.batch_size} with "
                             f"drop_last={drop_last}: no batch to train on.")
        self._pool, self._pending = None, {}
        self.set_epoch(0)

    def grain_dataset(self, epoch):
        """The grain.MapDataset of epoch `epoch`'s batches ({"image", "label"}, not normalised):
        this process's parts of them."""
        ds = self._base
        if self.shuffle:
            ds = ds.shuffle(seed=_epoch_seed(self.seed, epoch, 0))
        ds = ds.map(self.decode)
        if self.augment:
            ds = ds.random_map(CropFlip(self.pad, self.augment == "crop_flip"), seed=_epoch_seed(self.seed, epoch, 1))
        if self.process_count == 1:
            return ds.batch(self.batch_size, drop_remainder=self.drop_last)
        # global batch g is local batches g * count ... g * count + count - 1: take ours
        local = ds.batch(self.batch_size // self.process_count, drop_remainder=True)
        return local[self.process_index::self.process_count]

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        self._batches = self.grain_dataset(self.epoch)
        for future in self._pending.values():
            future.cancel()
        self._pending = {}

    def __len__(self):
        return len(self._batches)

    def _read(self, batches, index):
        batch = batches[index]
        x = batch["image"]
        return (self.normalize(x) if self.normalize is not None else x), batch["label"]

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch {index} of an epoch of {len(self)} batches.")
        if not self.read_ahead:
            return self._read(self._batches, index)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.read_ahead, thread_name_prefix="zoo-stream")
        future = self._pending.pop(index, None) or self._pool.submit(self._read, self._batches, index)
        for ahead in range(index + 1, min(index + 1 + self.read_ahead, len(self))):
            if ahead not in self._pending:
                self._pending[ahead] = self._pool.submit(self._read, self._batches, ahead)
        for stale in [i for i in self._pending if i <= index]:
            self._pending.pop(stale).cancel()
        return future.result()


@dataclasses.dataclass
class StreamingDataset:
    """A data set read from disk batch by batch: `train_batches` / `test_batches` for fit.

    Build it with `StreamingDataset.image_folder(...)` or `StreamingDataset.array_record(...)`.
    It has the facts of an in-memory `zoo.data.Dataset` (name, num_classes, input_shape,
    normalize, preprocessing) but no arrays."""

    name: str
    train_source: object
    test_source: object
    num_classes: int
    image_shape: tuple
    source: str
    color_mode: str = "rgb"
    mean: tuple = (0.0,)
    std: tuple = (1.0,)

    @classmethod
    def image_folder(cls, path, image_size=(32, 32), color_mode="rgb", mean=None, std=None):
        """`path`/train/<class>/*.png and `path`/test/<class>/*.png (image_dataset_from_directory's layout)."""
        root = Path(path)
        if not (root / "train").is_dir() or not (root / "test").is_dir():
            raise DatasetNotFoundError(f"An image folder needs {path}/train/<class>/<image> and {path}/test/<class>/<image>.")
        check_choice("color_mode", color_mode, tuple(COLOR_MODES))
        train = ImageFolderSource(root / "train")
        test = ImageFolderSource(root / "test", classes=train.classes)
        channels = COLOR_MODES[color_mode][1]
        return cls("image_folder", train, test, len(train.classes), (*image_size, channels), str(root), color_mode,
                   *_mean_std(mean, std, channels))

    @classmethod
    def array_record(cls, path, mean=None, std=None):
        """`path`/train.array_record, `path`/test.array_record and meta.json (`write_array_record`)."""
        root = Path(path)
        meta_path = root / META
        missing = [p.name for p in (root / "train.array_record", root / "test.array_record", meta_path) if not p.is_file()]
        if missing:
            raise DatasetNotFoundError(f"An ArrayRecord data set needs train.array_record, test.array_record and meta.json "
                                       f"in {str(root)!r} (zoo.data.write_array_record writes them); missing: {', '.join(missing)}.")
        meta = json.loads(meta_path.read_text())
        shape = tuple(int(d) for d in meta["image_shape"])
        color_mode = "grayscale" if shape[-1] == 1 else "rgb"
        train = ArrayRecordSource([root / "train.array_record"])
        test = ArrayRecordSource([root / "test.array_record"])
        return cls("array_record", train, test, len(meta["classes"]), shape, str(root), color_mode,
                   *_mean_std(mean, std, shape[-1]))

    @property
    def input_shape(self):
        return tuple(self.image_shape)

    @property
    def num_train(self):
        return len(self.train_source)

    @property
    def num_test(self):
        return len(self.test_source)

    @property
    def preprocessing(self):
        return preprocessing_config(1 / 255, self.mean, self.std)

    def normalize(self, x):
        """uint8 images -> float32 (x / 255 - mean) / std."""
        return normalize_images(x, self.mean, self.std)

    def train_batches(self, batch_size, seed=0, shuffle=True, augment=None, pad=4, drop_last=False, **kwargs):
        return StreamingBatches(self.train_source, batch_size, self.image_shape[:2], self.color_mode, self.normalize,
                                shuffle=shuffle, seed=seed, augment=augment, pad=pad, drop_last=drop_last, **kwargs)

    def test_batches(self, batch_size, **kwargs):
        return StreamingBatches(self.test_source, batch_size, self.image_shape[:2], self.color_mode, self.normalize,
                                **kwargs)


def _mean_std(mean, std, channels):
    """The given statistics, or those zoo.data.load_image_folder uses (the same batches in memory)."""
    default_mean, default_std = NORMALIZATION["image_folder"]
    return tuple(mean if mean is not None else default_mean), tuple(std if std is not None else default_std)
