"""Reading a model ``.npz`` in order of trust: the zip's directory, the JSON config, each array's ``.npy``
header, and an array's data last, straight into the buffer that will hold it.

The zip and ``.npy`` checks are :class:`.npz.NpzReader`'s; this adds what a model file must hold. Every
problem becomes a :class:`ModelFileError` naming the file; nothing is unpickled or executed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .npz import NpyHeader, NpzError, NpzReader

FORMAT = "scratchpilot-model"
FORMAT_VERSION = 2
CONFIG_KEY = "config.json"


class ModelFileError(ValueError):
    """A model file that cannot be loaded; the message names the file and the problem."""


#: the largest config a model file may carry (its history and metadata included); parsed, JSON can take
#: some 25 times its size in Python objects, so this also bounds what a crafted config costs
MAX_CONFIG_BYTES = 2 << 20
#: the deepest nesting of lists and objects a config may have (a real one nests 4 deep)
MAX_CONFIG_DEPTH = 32


class Archive:
    """A model ``.npz`` read in order of trust: the zip's directory (each entry's size against what its
    compression can deliver), the config, then each array's ``.npy`` header (shape, dtype, and a data size
    the entry really holds), and an array's data only once the whole architecture has been checked
    against every header — so a crafted entry (a deflate bomb, a header claiming 10¹³ values) is refused
    before anything is allocated for it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Archive:
        path = self.path
        if not path.exists():
            raise ModelFileError(f"{path}: no such model file")
        if path.is_dir():
            raise ModelFileError(f"{path}: a folder, not a model file")
        try:
            self.npz = NpzReader(path)
        except NpzError as err:
            raise self._error(err, f"entry {err.entry} ") from None
        try:
            if CONFIG_KEY not in self.npz.names:
                raise ModelFileError(f"{path}: not a scratchpilot model (no {CONFIG_KEY} entry; "
                                     f"entries: {sorted(self.npz.entries)[:5]})")
            self.config = self._read_config()
        except BaseException:
            self.npz.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.npz.close()

    def _error(self, err: NpzError, name: str) -> ModelFileError:
        """``err`` as a model file error; ``name`` says how the message names the entry at fault."""
        if err.kind == "not-npz":
            return ModelFileError(f"{self.path}: not a scratchpilot model file ({err.problem})")
        if err.kind == "damaged":
            return ModelFileError(f"{self.path}: not a readable scratchpilot model file (truncated or "
                                  f"corrupted?): {err.problem}")
        return ModelFileError(f"{self.path}: {name if err.entry else ''}{err.problem}")

    def names(self) -> set[str]:
        """The array entries (the config left out)."""
        return set(self.npz.names) - {CONFIG_KEY}

    def header(self, name: str) -> NpyHeader:
        """The entry's .npy header, checked against the entry's size, reading nothing else (read once)."""
        try:
            return self.npz.header(name)
        except NpzError as err:
            raise self._error(err, f"array {name} ") from None

    def check(self, name: str, shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
        """Refuse the entry unless its header says ``shape`` and ``dtype``; ``what`` names its user."""
        if name not in self.npz.names:
            raise ModelFileError(f"{self.path}: missing array {name} for {what}")
        header = self.header(name)
        if header.shape != tuple(shape):
            raise ModelFileError(f"{self.path}: array {name} has shape {header.shape}, {what} needs {tuple(shape)}")
        if header.dtype != dtype:
            raise ModelFileError(f"{self.path}: array {name} has dtype {header.dtype}, expected {dtype}")

    def read_into(self, name: str, target: np.ndarray) -> None:
        """Fill the C-contiguous ``target`` from the entry (checked by :meth:`check`), a chunk at a time,
        refusing NaN or infinite values: no copy of the array is ever made."""
        def finite(values: np.ndarray) -> None:
            if not np.isfinite(values).all():
                raise ModelFileError(f"{self.path}: array {name} contains NaN or infinite values")

        try:
            self.npz.read_into(name, target, check=finite)
        except NpzError as err:
            raise self._error(err, f"array {name} ") from None

    def read(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The entry's data, after checking its header against ``shape`` and ``dtype``."""
        self.check(name, shape, dtype, "the config")
        try:
            return self.npz.read(name)
        except NpzError as err:
            raise self._error(err, f"array {name} ") from None

    def _read_config(self) -> dict:
        path = self.path
        header = self.header(CONFIG_KEY)
        if header.dtype != np.uint8 or len(header.shape) != 1:
            raise ModelFileError(f"{path}: {CONFIG_KEY} must be a 1-D uint8 array, got {header.dtype} "
                                 f"{header.shape}")
        if header.shape[0] > MAX_CONFIG_BYTES:
            raise ModelFileError(f"{path}: {CONFIG_KEY} is {header.shape[0]:,d} bytes, more than the "
                                 f"{MAX_CONFIG_BYTES:,d} a model config may take")
        raw = self.read(CONFIG_KEY, header.shape, header.dtype)
        try:
            config = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise ModelFileError(f"{path}: config is not valid UTF-8 JSON: {type(exc).__name__}: {exc}") from None
        if _depth(config) > MAX_CONFIG_DEPTH:
            raise ModelFileError(f"{path}: config nests deeper than {MAX_CONFIG_DEPTH} levels (tampered?)")
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ModelFileError(f"{path}: not a scratchpilot model (format is "
                                 f"{brief(config.get('format') if isinstance(config, dict) else config)})")
        version = config.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ModelFileError(f"{path}: bad format_version {brief(version)}")
        if version > FORMAT_VERSION:
            raise ModelFileError(f"{path}: written by a newer scratchpilot (format version {version}); "
                                 f"this one reads up to {FORMAT_VERSION}: upgrade scratchpilot")
        metadata = config.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ModelFileError(f"{path}: metadata must be a JSON object, got {brief(metadata)}")
        return config


def _depth(value) -> int:
    """How deep lists and objects nest in a parsed JSON value (iteratively: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_CONFIG_DEPTH:
                return deepest
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def brief(value, limit: int = 120) -> str:
    """``repr(value)`` (a string as it is), cut to ``limit`` characters: a crafted config's values can be
    megabytes long."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
