"""scratchpilot.data: digit datasets in, Kaggle files out (NumPy only; tqdm used if installed).

- :func:`load_mnist`, :func:`resolve_dataset` / :class:`Dataset`, :func:`to_features`: what training and
  the commands use (see :mod:`scratchpilot.data.datasets` for where files are looked for).
- :func:`read_idx`, :func:`write_idx`: the MNIST file format.
- :func:`read_kaggle_csv`, :func:`write_kaggle_csv`, :func:`write_submission`, :func:`read_submission`:
  Kaggle "Digit Recognizer" files.
- :func:`download`: mirrors in order, SHA-256 verified, atomic.
"""

from .datasets import (
    DATASET_NAMES,
    DIGIT_CLASS_NAMES,
    FASHION_CLASS_NAMES,
    Dataset,
    DatasetError,
    default_cache_dir,
    fetch,
    load_mnist,
    resolve_dataset,
    to_features,
)
from .download import ChecksumError, DownloadError, download, sha256_file
from .idx import IdxFormatError, read_idx, write_idx
from .kaggle import CsvFormatError, read_kaggle_csv, read_submission, write_kaggle_csv, write_submission

__all__ = [
    "DATASET_NAMES", "DIGIT_CLASS_NAMES", "FASHION_CLASS_NAMES", "Dataset", "DatasetError",
    "default_cache_dir", "fetch", "load_mnist", "resolve_dataset", "to_features",
    "ChecksumError", "DownloadError", "download", "sha256_file",
    "IdxFormatError", "read_idx", "write_idx",
    "CsvFormatError", "read_kaggle_csv", "read_submission", "write_kaggle_csv", "write_submission",
]
