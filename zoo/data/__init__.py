"""Data: loaders of local data sets, generated data sets, and resumable batches for fit."""

from zoo.data.synthetic import TIME_RULES, adding_problem, sign_of_weighted_sum
from zoo.data.datasets import (
    Dataset,
    DatasetNotFoundError,
    load_cifar,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_mnist1d,
    load_time_task,
    read_idx,
)
from zoo.data.pipeline import ArrayBatches, EpochSetter, random_crop_flip
from zoo.data.streaming import (
    ArrayRecordSource,
    ImageFolderSource,
    StreamingBatches,
    StreamingDataset,
    write_array_record,
)
