"""Datasets: HDF5 format and validation, partitioning, slab reads, generation, conversion, description."""

from pgd.data.convert import convert_file
from pgd.data.describe import combine_descriptions, describe_dataset, format_description
from pgd.data.format import DEFAULT_X_KEY, DEFAULT_Y_KEY, FORMAT_VERSION, DatasetMeta, inspect_dataset, open_h5
from pgd.data.generate import generate_dataset
from pgd.data.partition import block_range
from pgd.data.slab import count_nonfinite, iter_row_blocks, read_rows, read_weights

__all__ = [
    "DEFAULT_X_KEY", "DEFAULT_Y_KEY", "FORMAT_VERSION", "DatasetMeta",
    "block_range", "combine_descriptions", "convert_file", "count_nonfinite", "describe_dataset",
    "format_description", "generate_dataset", "inspect_dataset", "iter_row_blocks", "open_h5",
    "read_rows", "read_weights",
]
