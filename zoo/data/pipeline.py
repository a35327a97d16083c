"""Batches for `model.fit`: shuffled and augmented from (seed, epoch) alone, so a run resumed
after a crash sees exactly the batches the uninterrupted run saw.

Augmentation: random crop with zero padding and horizontal flips (He et al.'s CIFAR recipe),
done in numpy per batch from a generator seeded by (seed, epoch, batch); optionally, after the
crop and flip, Keras' own `keras.layers.RandAugment` (Cubuk et al. 2020), run eagerly on the
active backend with a seed drawn from that same generator, so its batches too are a function
of (seed, epoch, batch) alone.
"""

import math

import keras
import numpy as np

from zoo.errors import check_range


def random_crop_flip(images, rng, pad=4, flip=True):
    """Pad by `pad` pixels (zeros), crop back at a random offset, flip half of the images."""
    n, h, w, _ = images.shape
    if pad:
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        dy = rng.integers(0, 2 * pad + 1, n)
        dx = rng.integers(0, 2 * pad + 1, n)
        images = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        flips = rng.random(n) < 0.5
        images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    return images


def check_process_part(process_index, process_count, batch_size, drop_last):
    """(index, count) of a process's part of each batch, checked: the parts must be equal."""
    count = int(check_range("process_count", process_count, low=1, integer=True))
    index = int(check_range("process_index", process_index, low=0, high=count - 1, integer=True))
    if count > 1 and (batch_size % count or not drop_last):
        raise ValueError(f"Received batch_size={batch_size}, drop_last={drop_last} over {count} processes; each process "
                         f"takes an equal part of every batch, so batch_size must be a multiple of {count} and "
                         "drop_last=True (no smaller last batch).")
    return index, count


class ArrayBatches(keras.utils.PyDataset):
    """(x, y) numpy arrays -> normalised float32 batches for fit/evaluate.

    Args:
        x, y: arrays (images uint8 NHWC or float sequences), integer labels.
        batch_size: samples a batch; the last batch may be smaller unless `drop_last`.
        normalize: function applied to each batch of x (e.g. `Dataset.normalize`).
        shuffle, seed: a new permutation each epoch from (seed, epoch).
        augment: None, "crop_flip", "crop" or "randaugment" (crop and flip, then
            `keras.layers.RandAugment` with its defaults: 2 operations a batch, factor 0.5). Every
            augmentation needs images (N, H, W, C); "randaugment" needs uint8 ones (values 0-255).
            RandAugment runs on the active backend: on a CPU it costs far more than the crop
            (seconds a batch of 64 images, most on torch, whose affine transforms are slow there).
        pad: crop padding in pixels.
        process_index, process_count: this process's rows of each batch in data-parallel training
            over processes (zoo.data.streaming.StreamingBatches has the same): the batch is drawn and
            augmented whole, then rows [i * b, (i + 1) * b), b = batch_size / process_count, are
            kept, so the parts of a batch together are what one process would train on. More than
            one process needs drop_last=True and a batch_size that they divide.
    """

    def __init__(self, x, y, batch_size, normalize=None, shuffle=False, seed=0, augment=None, pad=4, drop_last=False,
                 process_index=0, process_count=1, **kwargs):
        super().__init__(**kwargs)
        if len(x) != len(y):
            raise ValueError(f"Received {len(x)} inputs and {len(y)} labels; they must match.")
        self.x, self.y = x, y
        self.batch_size = int(check_range("batch_size", batch_size, low=1, integer=True))
        self.normalize = normalize
        self.shuffle, self.seed, self.pad, self.drop_last = shuffle, int(seed), int(pad), drop_last
        if augment not in (None, "crop_flip", "crop", "randaugment"):
            raise ValueError(f"Received augment={augment!r}; allowed: None, 'crop_flip', 'crop', 'randaugment'.")
        if augment and np.ndim(x) != 4:
            raise ValueError(f"Received augment={augment!r} for inputs of shape {np.shape(x)}; augmentation needs images (N, H, W, C).")
        if augment == "randaugment" and np.asarray(x[:0]).dtype != np.uint8:
            raise ValueError(
                f"Received augment='randaugment' for {np.asarray(x[:0]).dtype} images; it needs uint8 images (values 0-255), "
                "as the loaders of zoo.data return them."
            )
        self.augment = augment
        self.process_index, self.process_count = check_process_part(process_index, process_count, self.batch_size,
                                                                    drop_last)
        self.epoch = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch):
        if not self.shuffle:
            return np.arange(len(self.x))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.x))

    def set_epoch(self, epoch):
        """Batches of epoch `epoch` (call it from `on_epoch_begin`: see `EpochSetter`)."""
        self.epoch = int(epoch)
        self._order = self._permutation(self.epoch)


    def __len__(self):
        n = len(self.x) / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def __getitem__(self, index):
        idx = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        x, y = self.x[idx], self.y[idx]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index, 1])
            if self.augment in ("crop_flip", "crop"):
                x = random_crop_flip(x, rng, pad=self.pad, flip=self.augment == "crop_flip")
            else:
                x = self._rand_augment(x, rng)
        if self.process_count > 1:
            part = len(idx) // self.process_count
            rows = slice(self.process_index * part, (self.process_index + 1) * part)
            x, y = x[rows], y[rows]
        if self.normalize is not None:
            x = self.normalize(x)
        return x, y

    def _rand_augment(self, x, rng):
        """Crop and flip, then `keras.layers.RandAugment` seeded from `rng`: a new layer per batch,
        so the result depends on (seed, epoch, batch) only, whatever was drawn before and in
        whichever thread a `PyDataset` worker calls this."""
        x = random_crop_flip(x, rng, pad=self.pad)
        layer = keras.layers.RandAugment(value_range=(0, 255), seed=int(rng.integers(2**31 - 1)), data_format="channels_last")
        out = layer(x.astype("float32"), training=True)
        return np.clip(np.round(keras.ops.convert_to_numpy(out)), 0, 255).astype("uint8")


class EpochSetter(keras.callbacks.Callback):
    """Tells an `ArrayBatches` which epoch `fit` is in, so batches depend on the epoch
    number alone (and a resumed fit with `initial_epoch` sees the uninterrupted run's)."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)
