"""Conv layout: scratchpilot's NHWC Conv2D against the same im2col algorithm written in NCHW.

The second conv layer of two MNIST networks, float32, batch 64: LeNet's (14x14x32 -> 5x5, 64 channels,
"same") and the Keras mnist_cnn example's (26x26x32 -> 3x3, 64 channels, "valid"). Each version runs
forward and backward (dW, db, dX) with conv.py's blocking: images gathered and multiplied in blocks of about
``CACHE_BLOCK_ELEMENTS`` column elements, the whole batch's columns kept for dW. NCHW, with W as a
``(C_out, C·kh·kw)`` matrix and the columns gathered by one ``as_strided`` view of the padded input, comes in
both im2col orderings:

- "caffe": cols ``(C·kh·kw, N·Ho·Wo)``, y2 = W @ cols, dW = g2 @ colsᵀ, dcols = Wᵀ @ g2;
- "rows":  cols ``(N·Ho·Wo, C·kh·kw)``, y2 = cols @ Wᵀ, dW = g2ᵀ @ cols, dcols = g2 @ W;

y2 is permuted back to ``(N, C_out, Ho, Wo)`` by a transpose copy (and g to g2 the other way), and dX is the
sum of dcols over the kh·kw kernel offsets, each added to the strided slice of x it was read from. Before
timing, each NCHW version's y, dX, dW and db must match Conv2D's (layouts transposed) to a relative 1e-4.
Timed at 2 BLAS threads after ``fast.warm_up(2)``: best of ``--repeats`` runs after 3 warm-up runs.

Run: ``python bench/conv_layout.py [--repeats 20] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import table, write_result
from threadpoolctl import threadpool_limits

from scratchpilot import nn
from scratchpilot.nn import fast
from scratchpilot.nn.conv import CACHE_BLOCK_ELEMENTS, conv_padding

BATCH, WARMUP, TOLERANCE = 64, 3, 1e-4
# name: (input side, C_in, C_out, kernel, padding)
LAYERS = {"lenet_conv2": (14, 32, 64, 5, "same"), "keras_mnist_cnn_conv2": (26, 32, 64, 3, "valid")}
ORDERS = {"caffe": "NCHW, cols (C·kh·kw, N·Ho·Wo)", "rows": "NCHW, cols (N·Ho·Wo, C·kh·kw)"}


class NCHWConv:
    """Stride-1 im2col convolution in NCHW: x ``(N, C, H, W)``, W ``(C_out, C, kh, kw)``, b ``(C_out,)``.

        y[n, o, h, w] = b[o] + Σ_{c,i,j} x[n, c, h + i, w + j] · W[o, c, i, j]   (x zero-padded)
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, padding: str, order: str) -> None:
        self.cout, self.c, self.kh, self.kw = W.shape
        self.Wm, self.b, self.padding, self.caffe = W.reshape(self.cout, -1), b, padding, order == "caffe"

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, c, h, w = x.shape
        kh, kw = self.kh, self.kw
        pads = conv_padding(self.padding, (kh, kw), (1, 1), (h, w), "NCHWConv")
        (t, bottom), (left, right) = pads
        xp = np.zeros((n, c, h + t + bottom, w + left + right), dtype=x.dtype)
        xp[:, :, t:t + h, left:left + w] = x
        ho, wo = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
        p, k = ho * wo, c * kh * kw
        block = max(1, CACHE_BLOCK_ELEMENTS // (p * k))  # images per block, as Conv2D._images_per_block
        cols = np.empty((k, n * p) if self.caffe else (n * p, k), dtype=x.dtype)
        out = np.empty((n, self.cout, ho, wo), dtype=x.dtype)
        sn, sc, sh, sw = xp.strides
        for start in range(0, n, block):
            nb = min(n - start, block)
            rows, src = slice(start * p, (start + nb) * p), xp[start:start + nb]
            # the reshapes only split axes, so they are views of cols and copyto fills cols itself
            if self.caffe:
                view = np.lib.stride_tricks.as_strided(src, (c, kh, kw, nb, ho, wo), (sc, sh, sw, sn, sh, sw),
                                                       writeable=False)
                part = cols[:, rows]
                np.copyto(part.reshape(view.shape), view)
                y2 = (self.Wm @ part).reshape(self.cout, nb, ho, wo).transpose(1, 0, 2, 3)
            else:
                view = np.lib.stride_tricks.as_strided(src, (nb, ho, wo, c, kh, kw), (sn, sh, sw, sc, sh, sw),
                                                       writeable=False)
                part = cols[rows]
                np.copyto(part.reshape(view.shape), view)
                y2 = (part @ self.Wm.T).reshape(nb, ho, wo, self.cout).transpose(0, 3, 1, 2)
            np.add(y2, self.b[:, None, None], out=out[start:start + nb])  # the transpose copy, plus bias
        self._cache = (xp, pads, (ho, wo), cols, block, x.shape)
        return out

    def backward(self, g: np.ndarray):
        """(dX, dW ``(C_out, C, kh, kw)``, db) for g = ∂L/∂y ``(N, C_out, Ho, Wo)``."""
        xp, pads, (ho, wo), cols, block, x_shape = self._cache
        n, p, c, kh, kw = g.shape[0], ho * wo, self.c, self.kh, self.kw
        db = g.sum(axis=(0, 2, 3))
        if self.caffe:
            g2 = g.transpose(1, 0, 2, 3).reshape(self.cout, n * p)  # a copy
            dW = g2 @ cols.T
        else:
            g2 = g.transpose(0, 2, 3, 1).reshape(n * p, self.cout)
            dW = g2.T @ cols
        dxp = np.zeros_like(xp)
        for start in range(0, n, block):
            nb = min(n - start, block)
            rows = slice(start * p, (start + nb) * p)
            if self.caffe:  # dcols as (nb, C, kh, kw, Ho, Wo) either way
                dcols = (self.Wm.T @ g2[:, rows]).reshape(c, kh, kw, nb, ho, wo).transpose(3, 0, 1, 2, 4, 5)
            else:
                dcols = (g2[rows] @ self.Wm).reshape(nb, ho, wo, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
            target = dxp[start:start + nb]
            for i in range(kh):
                for j in range(kw):
                    target[:, :, i:i + ho, j:j + wo] += dcols[:, :, i, j]
        (t, _), (left, _) = pads
        dx = dxp[:, :, t:t + x_shape[2], left:left + x_shape[3]]
        return dx, dW.reshape(self.cout, c, kh, kw), db


def _relative(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.max(np.abs(ref - got)) / max(np.max(np.abs(ref)), np.finfo(np.float32).tiny))


def _time(forward, backward, repeats: int) -> dict:
    """Best forward, backward and total milliseconds of ``repeats`` runs after WARMUP untimed ones."""
    runs = []
    for r in range(WARMUP + repeats):
        t0 = time.perf_counter()
        forward()
        t1 = time.perf_counter()
        backward()
        t2 = time.perf_counter()
        if r >= WARMUP:
            runs.append((t1 - t0, t2 - t1))
    return {"forward_ms": 1e3 * min(f for f, _ in runs), "backward_ms": 1e3 * min(b for _, b in runs),
            "total_ms": 1e3 * min(f + b for f, b in runs)}


def bench_layer(side: int, cin: int, cout: int, kernel: int, padding: str, repeats: int) -> dict:
    """Check both NCHW orderings against ``nn.Conv2D`` on one layer, then time all three."""
    rng = np.random.default_rng(0)
    layer = nn.Conv2D(cin, cout, kernel, padding=padding)
    layer.build(np.random.default_rng(0), np.float32)
    layer.params["b"][:] = rng.standard_normal(cout)  # non-zero, so the check covers the bias
    x = rng.standard_normal((BATCH, side, side, cin), dtype=np.float32)
    y = layer.forward(x, training=True)
    g = rng.standard_normal(y.shape, dtype=np.float32)
    dx = layer.backward(g)
    W_nchw = np.ascontiguousarray(layer.params["W"].transpose(3, 2, 0, 1))  # (kh, kw, C, O) -> (O, C, kh, kw)
    x_nchw, g_nchw = (np.ascontiguousarray(a.transpose(0, 3, 1, 2)) for a in (x, g))
    result = {"input": [BATCH, side, side, cin], "kernel": kernel, "out_channels": cout, "padding": padding,
              "output": list(y.shape), "check": {}, "timings": {}}
    convs = {order: NCHWConv(W_nchw, layer.params["b"].copy(), padding, order) for order in ORDERS}
    for order, conv in convs.items():
        y2 = conv.forward(x_nchw)
        dx2, dW2, db2 = conv.backward(g_nchw)
        errors = {"y": _relative(y, y2.transpose(0, 2, 3, 1)), "dX": _relative(dx, dx2.transpose(0, 2, 3, 1)),
                  "dW": _relative(layer.grads["W"], dW2.transpose(2, 3, 1, 0)),
                  "db": _relative(layer.grads["b"], db2)}
        result["check"][order] = errors
        bad = {k: v for k, v in errors.items() if not v <= TOLERANCE}
        if bad:
            raise AssertionError(f"NCHW ({order}) differs from Conv2D beyond {TOLERANCE}: {bad}")
    result["timings"]["nhwc"] = _time(lambda: layer.forward(x, training=True), lambda: layer.backward(g), repeats)
    for order, conv in convs.items():
        result["timings"][order] = _time(lambda c=conv: c.forward(x_nchw), lambda c=conv: c.backward(g_nchw),
                                         repeats)
    nhwc = result["timings"]["nhwc"]
    for order in ORDERS:
        t = result["timings"][order]
        t["ratio_nchw_nhwc"] = {k[:-3]: t[k] / nhwc[k] for k in ("forward_ms", "backward_ms", "total_ms")}
    result["faster_nchw_order"] = min(ORDERS, key=lambda o: result["timings"][o]["total_ms"])
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the results here (always written to bench/results/)")
    args = parser.parse_args(argv)
    repeats = max(1, args.repeats)

    fast.warm_up(2)
    results = {"problem": f"second conv layer of LeNet and Keras mnist_cnn, batch {BATCH}, float32, forward + "
                          "backward (dW, db, dX)", "blas_threads": 2, "repeats": repeats, "warmup": WARMUP,
               "cache_block_elements": CACHE_BLOCK_ELEMENTS, "tolerance": TOLERANCE, "orders": ORDERS,
               "layers": {}}
    rows = []
    with threadpool_limits(2, "blas"):
        for name, spec in LAYERS.items():
            r = results["layers"][name] = bench_layer(*spec, repeats)
            for key, label in (("nhwc", "NHWC (nn.Conv2D)"), *ORDERS.items()):
                t = r["timings"][key]
                rows.append({"layer": name, "layout": label, "ms forward": t["forward_ms"],
                             "ms backward": t["backward_ms"], "ms total": t["total_ms"],
                             "ratio NCHW/NHWC": t.get("ratio_nchw_nhwc", {"total": 1.0})["total"]})
    print(table(rows, ["layer", "layout", "ms forward", "ms backward", "ms total", "ratio NCHW/NHWC"]))
    print(f"(best of {repeats} runs after {WARMUP} warm-up runs, 2 BLAS threads; ratio of total times, above 1.0: "
          "NHWC faster)")
    for name, r in results["layers"].items():
        worst = max(v for errors in r["check"].values() for v in errors.values())
        print(f"{name}: faster NCHW ordering {ORDERS[r['faster_nchw_order']]}; NCHW matches Conv2D "
              f"(y, dX, dW, db) to a relative {worst:.1e}")
    path = write_result("conv_layout", results, also=args.json)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
