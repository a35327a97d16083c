"""Data: loaders of local data sets, generated data sets, and resumable batches for fit."""

from zoo.data.synthetic import adding_problem
from zoo.data.datasets import (
    Dataset,
    DatasetNotFoundError,
    load_cifar,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_mnist1d,
    read_idx,
)
from zoo.data.pipeline import ArrayBatches, EpochSetter, random_crop_flip
