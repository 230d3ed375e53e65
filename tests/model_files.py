"""Crafted model files that lie about their size, for the loader's memory tests and the CLI tests.

Each builder writes one ``.npz`` and returns the bytes of valid array data a faithful loader needs to hold
for it (0 for a file that must be refused).
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np


def npy(array=None, *, header_shape=None, dtype="<f4") -> bytes:
    """The bytes of a ``.npy``: of ``array``, or a bare header claiming ``header_shape`` with no data."""
    buf = io.BytesIO()
    if header_shape is None:
        np.save(buf, array)
    else:
        np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                                   "shape": tuple(header_shape)})
    return buf.getvalue()


def config(layers, **extra) -> dict:
    return {"format": "scratchpilot-model", "format_version": 2, "layers": layers,
            "loss": {"type": "SoftmaxCrossEntropy"}, **extra}


def dense(n_in: int, n_out: int) -> dict:
    return {"type": "Dense", "n_in": n_in, "n_out": n_out}


def write(path, cfg, entries: dict, compression=zipfile.ZIP_DEFLATED, raw_config: bytes | None = None) -> None:
    """A model file by hand: ``cfg`` as its config, ``entries`` {array name: .npy bytes}."""
    text = raw_config if raw_config is not None else json.dumps(cfg).encode()
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr("config.json.npy", npy(np.frombuffer(text, np.uint8)))
        for name, data in entries.items():
            z.writestr(f"{name}.npy", data)


def _zeros_entry(z: zipfile.ZipFile, name: str, n: int) -> None:
    """A ``.npy`` of ``n`` float32 zeros, streamed into the zip (deflated to about a thousandth)."""
    with z.open(f"{name}.npy", "w", force_zip64=True) as fh:
        fh.write(npy(header_shape=(n,)))
        block = bytes(1 << 22)
        left = n * 4
        while left:
            fh.write(block[:min(left, len(block))])
            left -= min(left, len(block))


def huge_layer(path) -> int:
    """A layer of 10⁹ units whose array headers claim its size; the entries hold no data."""
    write(path, config([dense(784, 10 ** 9)]), {"p0.W": npy(header_shape=(784, 10 ** 9)),
                                                "p0.b": npy(header_shape=(10 ** 9,))})
    return 0


def wide_layer_truncated(path) -> int:
    """A 10⁵-unit layer (313 MB of weights) whose weight entry is cut short after 1 MB."""
    data = npy(np.zeros((784, 100_000), np.float32))
    write(path, config([dense(784, 100_000)]), {"p0.W": data[:1 << 20],
                                                "p0.b": npy(np.zeros(100_000, np.float32))})
    return 0


def header_claims_1e12(path) -> int:
    """An array header claiming 10¹² floats, for a layer that would take them."""
    write(path, config([dense(10 ** 6, 10 ** 6)]), {"p0.W": npy(header_shape=(10 ** 6, 10 ** 6)),
                                                    "p0.b": npy(np.zeros(10 ** 6, np.float32))})
    return 0


def deep_nesting(path) -> int:
    """A config nested 100,000 deep (in its metadata)."""
    text = json.dumps(config([dense(4, 3)])).encode()[:-1] + b', "metadata": ' + b"[" * 100_000 + \
        b"]" * 100_000 + b"}"
    write(path, None, {"p0.W": npy(np.zeros((4, 3), np.float32)), "p0.b": npy(np.zeros(3, np.float32))},
          raw_config=text)
    return 0


def many_layers(path, n_layers: int = 20_000, width: int = 100) -> int:
    """``n_layers`` layers (dense and ReLU by turns) in a file of a few MB: their zero weights deflate."""
    layers = [dense(width, width) if i % 2 == 0 else {"type": "ReLU"} for i in range(n_layers)]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json.npy", npy(np.frombuffer(json.dumps(config(layers)).encode(), np.uint8)))
        w, b = npy(np.zeros((width, width), np.float32)), npy(np.zeros(width, np.float32))
        for i in range(0, n_layers, 2):
            z.writestr(f"p{i}.W.npy", w)
            z.writestr(f"p{i}.b.npy", b)
    return 0


def over_the_size_cap(path, values: int) -> int:
    """Dense layers that together hold ``values`` zero parameters, deflated: a valid file over the cap."""
    width = 2000
    n = max(1, values // (width * width))
    layers = [dense(width, width) for _ in range(n)]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json.npy", npy(np.frombuffer(json.dumps(config(layers)).encode(), np.uint8)))
        for i in range(n):
            _zeros_entry(z, f"p{i}.W", width * width)
            z.writestr(f"p{i}.b.npy", npy(np.zeros(width, np.float32)))
    return 0


def extra_zero_entry(path, n_bytes: int = 400 << 20) -> int:
    """A valid small model plus an extra entry of ``n_bytes`` zeros (deflated to a few hundred KB)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json.npy", npy(np.frombuffer(json.dumps(config([dense(4, 3)])).encode(), np.uint8)))
        z.writestr("p0.W.npy", npy(np.zeros((4, 3), np.float32)))
        z.writestr("p0.b.npy", npy(np.zeros(3, np.float32)))
        _zeros_entry(z, "extra", n_bytes // 4)
    return 0


def deflate_bomb(path) -> int:
    """An entry whose directory claims it unpacks to 2 GB from a few bytes (a lie deflate cannot keep)."""
    write(path, config([dense(4, 3)]), {"p0.W": npy(np.zeros((4, 3), np.float32)),
                                        "p0.b": npy(np.zeros(3, np.float32))})
    data = bytearray(open(path, "rb").read())
    central = data.index(b"PK\x01\x02")  # the first directory entry: the config's
    # the uncompressed size of the config entry, in its local header (offset 22) and directory entry (24)
    data[22:26] = (2_000_000_000).to_bytes(4, "little")
    data[central + 24:central + 28] = (2_000_000_000).to_bytes(4, "little")
    open(path, "wb").write(bytes(data))
    return 0


def valid_wide(path, width: int = 2000) -> int:
    """A valid model with real (random) weights: Dense(width, width); loads."""
    from scratchpilot import nn

    model = nn.Sequential([nn.Dense(width, width), nn.ReLU(), nn.Dense(width, 10)], seed=0)
    model.save(path)
    return 4 * model.n_parameters()


CRAFTED = {"huge_layer": huge_layer, "wide_layer_truncated": wide_layer_truncated,
           "header_claims_1e12": header_claims_1e12, "deep_nesting": deep_nesting, "many_layers": many_layers,
           "over_the_size_cap": lambda path: over_the_size_cap(path, 80_000_000),
           "extra_zero_entry": extra_zero_entry, "deflate_bomb": deflate_bomb}
