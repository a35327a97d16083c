"""Streaming input (issue #16): image folders and ArrayRecord files read batch by batch through
grain, memory that does not grow with the data set, the same batches for the same seed, and a
run resumed mid-epoch that ends where the uninterrupted one does."""

import json
import tracemalloc

import numpy as np
import pytest
from conftest import to_numpy
from PIL import Image

import zoo
from zoo.data import ArrayBatches, StreamingDataset, load_image_folder, write_array_record

from recipes import train as recipe

CLASSES = ("cat", "dog", "eel")


def make_image_folder(root, train, test=12, size=8, seed=0):
    """`train` / `test` random PNG images of size x size x 3 over three class folders."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        for i in range(n):
            folder = root / split / CLASSES[i % 3]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return root


def epoch_arrays(batches, epoch=0):
    batches.set_epoch(epoch)
    return [(np.asarray(x), np.asarray(y)) for x, y in (batches[i] for i in range(len(batches)))]


def test_streamed_batches_are_the_in_memory_ones_for_folders_and_records(tmp_path):
    root = make_image_folder(tmp_path / "images", train=30)
    in_memory = load_image_folder(root, image_size=(8, 8))
    expected = epoch_arrays(ArrayBatches(in_memory.x_test, in_memory.y_test, 5, normalize=in_memory.normalize))

    folder = StreamingDataset.image_folder(root, image_size=(8, 8))
    write_array_record(tmp_path / "records", "train", in_memory.x_train, in_memory.y_train, classes=CLASSES)
    write_array_record(tmp_path / "records", "test", in_memory.x_test, in_memory.y_test)
    records = StreamingDataset.array_record(tmp_path / "records")
    assert json.loads((tmp_path / "records" / "meta.json").read_text())["splits"] == {"train": 30, "test": 12}
    for data in (folder, records):
        assert (data.num_train, data.num_test, data.num_classes, data.input_shape) == (30, 12, 3, (8, 8, 3))
        assert data.preprocessing == in_memory.preprocessing
        got = epoch_arrays(data.test_batches(5))
        assert len(got) == len(expected) == 3
        for (x, y), (ex, ey) in zip(got, expected):
            np.testing.assert_allclose(x, ex, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(y, ey)


def test_same_seed_same_batches_and_process_parts_make_up_each_batch(tmp_path):
    data = StreamingDataset.image_folder(make_image_folder(tmp_path, train=40), image_size=(8, 8))

    def batches(**kw):
        return data.train_batches(8, seed=3, augment="crop_flip", pad=2, **kw)

    first, again = epoch_arrays(batches(), 1), epoch_arrays(batches(workers=2), 1)
    for (x, y), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(first[0][0], epoch_arrays(batches(), 2)[0][0])  # a new order each epoch
    assert not np.array_equal(first[0][0], epoch_arrays(data.train_batches(8, seed=4, augment="crop_flip", pad=2), 1)[0][0])

    # data parallel over two processes: each reads its half of every batch; the halves, side by
    # side, are the batch one process reads (shuffled and augmented alike)
    def halves_and_whole(make):
        parts = [epoch_arrays(make(process_index=i, process_count=2), 1) for i in range(2)]
        return parts, epoch_arrays(make(), 1)

    in_memory = load_image_folder(tmp_path, image_size=(8, 8))
    for make in (lambda **kw: batches(drop_last=True, **kw),
                 lambda **kw: ArrayBatches(in_memory.x_train, in_memory.y_train, 8, normalize=in_memory.normalize,
                                           shuffle=True, seed=3, augment="crop_flip", pad=2, drop_last=True, **kw)):
        parts, whole = halves_and_whole(make)
        assert len(whole) == len(parts[0]) == len(parts[1]) == 5 and len(parts[0][0][1]) == 4
        for (x0, y0), (x1, y1), (x, y) in zip(*parts, whole):
            np.testing.assert_array_equal(np.concatenate([x0, x1]), x)
            np.testing.assert_array_equal(np.concatenate([y0, y1]), y)

    with pytest.raises(ValueError, match=r"process_index=3"):
        data.train_batches(4, drop_last=True, process_index=3, process_count=2)
    with pytest.raises(ValueError, match=r"batch_size=5, drop_last=True over 2 processes.*multiple of 2"):
        data.train_batches(5, drop_last=True, process_count=2)
    with pytest.raises(ValueError, match=r"augment='randaugment'"):
        data.train_batches(4, augment="randaugment")
    with pytest.raises(zoo.data.DatasetNotFoundError, match=r"train.array_record, test.array_record and meta.json"):
        StreamingDataset.array_record(tmp_path / "nowhere")


def peak_bytes_of_an_epoch(data):
    """Peak Python/numpy memory (tracemalloc) while reading every training batch once, one batch
    at a time (workers=0: the read-ahead threads add up to `workers` batches in flight, whose
    timing would blur the measure)."""
    tracemalloc.start()
    try:
        batches = data.train_batches(32, seed=0, augment="crop", workers=0)
        for i in range(len(batches)):
            batches[i]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    size = 32  # 3 KB an image
    small = make_image_folder(tmp_path / "small", train=200, size=size)
    large = make_image_folder(tmp_path / "large", train=1600, size=size)
    peak_bytes_of_an_epoch(StreamingDataset.image_folder(small, image_size=(size, size)))  # first-use costs
    peaks = [peak_bytes_of_an_epoch(StreamingDataset.image_folder(p, image_size=(size, size))) for p in (small, large)]
    grown = 1400 * size * size * 3  # what 1400 more images take in memory (uint8)
    assert peaks[1] - peaks[0] < 0.05 * grown, peaks  # about one batch at either size

    # the control: the same measure sees the in-memory loader grow with the data
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        kept = load_image_folder(large, image_size=(size, size))
        assert tracemalloc.get_traced_memory()[0] - base > kept.x_train.nbytes >= 1600 * size * size * 3
    finally:
        tracemalloc.stop()


def test_a_streamed_run_killed_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "images", train=80, test=16)
    config = recipe.load_config(None, [
        'model_args={"depth": 8, "drop_path_rate": 0.3}', "dataset=\"image_folder\"", "stream=true",
        f'dataset_args={{"path": "{root}", "image_size": [8, 8]}}', "batch_size=16", "epochs=2",
        "augment=\"crop_flip\"", "pad=1", "checkpoint_every_steps=2",
    ])  # 5 batches an epoch: step checkpoints after batches 2 and 4
    data, model = recipe.prepare(config, tmp_path / "whole")
    metrics = recipe.fit(config, tmp_path / "whole", data, model)
    assert metrics["test_samples"] == 16
    whole = [to_numpy(w) for w in model.weights]

    save = recipe.save_checkpoint

    def killed_after_batch_2_of_epoch_2(folder, trainer, epoch, keep=2, step=0):
        path = save(folder, trainer, epoch, keep=keep, step=step)
        if (epoch, step) == (1, 2):
            raise RuntimeError("killed")
        return path

    monkeypatch.setattr(recipe, "save_checkpoint", killed_after_batch_2_of_epoch_2)
    data, model = recipe.prepare(config, tmp_path / "killed")
    with pytest.raises(RuntimeError, match="killed"):
        recipe.fit(config, tmp_path / "killed", data, model)
    monkeypatch.undo()
    pointer = json.loads((tmp_path / "killed" / "checkpoints" / "latest.json").read_text())
    assert (pointer["epoch"], pointer["step"], pointer["file"]) == (1, 2, "epoch-0001.step-0000002.npz")

    data, model = recipe.prepare(config, tmp_path / "killed")
    recipe.fit(config, tmp_path / "killed", data, model, resume=True)
    for a, b in zip(whole, model.weights):
        np.testing.assert_array_equal(to_numpy(b), a, err_msg=b.path)
    assert json.loads((tmp_path / "killed" / "checkpoints" / "latest.json").read_text())["epoch"] == 2


def test_streaming_config_errors_say_what_is_allowed(tmp_path):
    with pytest.raises(ValueError, match=r"stream=true with dataset='digits'.*'image_folder' or 'array_record'"):
        recipe.make_data(recipe.load_config(None, ["stream=true"]))
    root = make_image_folder(tmp_path, train=6)
    with pytest.raises(ValueError, match=r"train_subset with a streamed data set"):
        recipe.make_data(recipe.load_config(None, ["stream=true", "dataset=\"image_folder\"", "train_subset=3",
                                                   f'dataset_args={{"path": "{root}"}}']))
