"""Datasets both sides need: loaders for real data on disk and federated partitions."""

from fedprune.data.partition import PARTITIONERS, ClientSplit, partition_indices, split_local
from fedprune.data.sources import DATASETS, DatasetMissingError, LabeledArrays, load_dataset, run_dataset

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "ClientSplit",
    "DatasetMissingError",
    "LabeledArrays",
    "load_dataset",
    "partition_indices",
    "run_dataset",
    "split_local",
]
