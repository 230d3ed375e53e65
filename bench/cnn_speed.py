"""CNN training speed on MNIST: scratchpilot vs PyTorch CPU vs a naive NumPy im2col CNN vs the matmul floor.

Two networks, float32, batch 64, SGD lr 0.01 momentum 0.9, softmax cross-entropy: a LeNet-style net
(conv 5x5 32 same, pool, conv 5x5 64 same, pool, dense 1024, dense 10) and the Keras ``mnist_cnn`` example
(conv 3x3 32, conv 3x3 64, pool, dense 128, dense 10; no dropout). Each implementation trains on the same
images: 5 untimed warm-up batches, then ``--batches`` timed ones (the naive CNN: 1 warm-up and
``--naive-batches`` timed), extrapolated to one epoch of 938 batches. The floor is the FLOPs of every
matrix product of a training step at this machine's 1024^3 sgemm rate (2 BLAS threads).

Run: ``python bench/cnn_speed.py [--batches 60] [--naive-batches 5] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from _common import mnist_features, table, write_result

BATCH, LR, MOMENTUM, WARMUP, EPOCH_BATCHES = 64, 0.01, 0.9, 5, -(-60000 // 64)
MIB = 1 << 20
# layer specs: ("conv", c_in, c_out, kernel, padding) | ("pool",) (2x2) | ("relu",) | ("flatten",) |
# ("dense", n_in, n_out); input 28x28x1
NETWORKS = {
    "lenet": [("conv", 1, 32, 5, "same"), ("relu",), ("pool",), ("conv", 32, 64, 5, "same"), ("relu",),
              ("pool",), ("flatten",), ("dense", 3136, 1024), ("relu",), ("dense", 1024, 10)],
    "keras_mnist_cnn": [("conv", 1, 32, 3, "valid"), ("relu",), ("conv", 32, 64, 3, "valid"), ("relu",),
                        ("pool",), ("flatten",), ("dense", 9216, 128), ("relu",), ("dense", 128, 10)],
}


# ---------------------------------------------------------------- the naive NumPy CNN (NCHW)
def im2col_indices(c, h, w, k, out_hw):
    """Index arrays (ch, row, col), each (c·k·k, Ho·Wo): row r of the column matrix, position p, reads
    x_padded[:, ch[r, p], row[r, p], col[r, p]] (r runs over channel, then kernel row, then kernel column)."""
    ho, wo = out_hw
    ch = np.repeat(np.arange(c), k * k)[:, None]
    row = np.tile(np.repeat(np.arange(k), k), c)[:, None] + np.repeat(np.arange(ho), wo)[None, :]
    col = np.tile(np.arange(k), k * c)[:, None] + np.tile(np.arange(wo), ho)[None, :]
    return ch, row, col


class NaiveCNN:
    """A from-scratch CNN as tutorials write it: fancy-index im2col, np.add.at col2im, NCHW, SGD momentum."""

    def __init__(self, spec, seed=0):
        rng = np.random.default_rng(seed)
        self.spec, self.params, self.velocity, self.index = spec, [], [], {}
        for layer in spec:
            if layer[0] == "conv":
                _, cin, cout, k, _ = layer
                W = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))
            elif layer[0] == "dense":
                W = rng.standard_normal((layer[1], layer[2])) * np.sqrt(2 / layer[1])
            else:
                self.params.append(None)
                continue
            self.params.append([W.astype(np.float32), np.zeros(W.shape[0] if layer[0] == "conv" else W.shape[1],
                                                               np.float32)])
        self.velocity = [None if p is None else [np.zeros_like(a) for a in p] for p in self.params]

    def conv_forward(self, i, x):
        """y = W * x + b by one GEMM over the gathered columns; caches what the backward pass needs."""
        _, cin, cout, k, padding = self.spec[i]
        p = (k - 1) // 2 if padding == "same" else 0
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        n, _, hp, wp = xp.shape
        out_hw = (hp - k + 1, wp - k + 1)
        key = (cin, hp, wp, k)
        if key not in self.index:
            self.index[key] = im2col_indices(cin, hp, wp, k, out_hw)
        cols = xp[:, self.index[key][0], self.index[key][1], self.index[key][2]]  # (N, K, L)
        cols = cols.transpose(1, 2, 0).reshape(cin * k * k, -1)  # (K, L·N)
        W, b = self.params[i]
        out = W.reshape(cout, -1) @ cols + b[:, None]
        return out.reshape(cout, out_hw[0], out_hw[1], n).transpose(3, 0, 1, 2), (cols, xp.shape, p, key)

    def conv_backward(self, i, g, cache, need_dx):
        """dW = g · colsᵀ, db = Σ g, and (if asked) dx by col2im: np.add.at of Wᵀ g into the padded input."""
        cols, xp_shape, p, key = cache
        W = self.params[i][0]
        cout = W.shape[0]
        g2 = g.transpose(1, 2, 3, 0).reshape(cout, -1)
        grads = [(g2 @ cols.T).reshape(W.shape), g2.sum(axis=1)]
        if not need_dx:
            return None, grads
        n = g.shape[0]
        dcols = (W.reshape(cout, -1).T @ g2).reshape(cols.shape[0], -1, n).transpose(2, 0, 1)
        dxp = np.zeros(xp_shape, np.float32)
        np.add.at(dxp, (slice(None), *self.index[key]), dcols)
        return dxp[:, :, p:xp_shape[2] - p, p:xp_shape[3] - p], grads

    def loss_and_grads(self, x, y):
        """Forward and backward pass: (mean softmax cross-entropy, per-layer [dW, db] or None)."""
        caches = []
        for i, layer in enumerate(self.spec):
            kind = layer[0]
            if kind == "conv":
                x, cache = self.conv_forward(i, x)
            elif kind == "relu":
                cache, x = x > 0, np.maximum(x, 0)
            elif kind == "pool":
                n, c, h, w = x.shape
                out = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
                cache, x = (x, out), out
            elif kind == "flatten":
                cache, x = x.shape, x.reshape(x.shape[0], -1)
            else:
                cache, x = x, x @ self.params[i][0] + self.params[i][1]
            caches.append(cache)
        z = x - x.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -logp[np.arange(len(y)), y].mean()
        g = np.exp(logp)
        g[np.arange(len(y)), y] -= 1
        g /= len(y)
        grads = [None] * len(self.spec)
        for i in range(len(self.spec) - 1, -1, -1):
            kind, cache = self.spec[i][0], caches[i]
            if kind == "conv":
                g, grads[i] = self.conv_backward(i, g, cache, need_dx=i > 0)
            elif kind == "relu":
                g = g * cache
            elif kind == "pool":
                x, out = cache
                n, c, h, w = x.shape
                mask = x.reshape(n, c, h // 2, 2, w // 2, 2) == out[:, :, :, None, :, None]
                g = (mask * g[:, :, :, None, :, None]).reshape(x.shape)
            elif kind == "flatten":
                g = g.reshape(cache)
            else:
                grads[i] = [cache.T @ g, g.sum(axis=0)]
                g = g @ self.params[i][0].T
        return float(loss), grads

    def train_step(self, x, y):
        """One SGD momentum step (v <- mu v - lr g; w <- w + v); returns the batch loss before the step."""
        loss, grads = self.loss_and_grads(x, y)
        for p, v, g in zip(self.params, self.velocity, grads, strict=True):
            for a, va, ga in zip(p or [], v or [], g or [], strict=True):
                va *= MOMENTUM
                va -= LR * ga
                a += va
        return loss


def conv_check():
    """Largest relative difference between the naive conv and scratchpilot's Conv2D (forward, dW, dx) on
    the same weights, over every conv layer of both networks."""
    from scratchpilot import nn

    rng, worst = np.random.default_rng(1), 0.0
    for spec in NETWORKS.values():
        for i, layer in enumerate(spec):
            if layer[0] != "conv":
                continue
            _, cin, cout, k, padding = layer
            naive = NaiveCNN(spec)
            x = rng.random((3, cin, 14 if i else 28, 14 if i else 28), dtype=np.float32)
            out, cache = naive.conv_forward(i, x)
            g = rng.standard_normal(out.shape).astype(np.float32)
            dx, (dW, _) = naive.conv_backward(i, g, cache, need_dx=True)
            conv = nn.Conv2D(cin, cout, k, stride=1, padding=padding)
            conv.build(rng, np.float32)
            conv.params["W"][...] = naive.params[i][0].transpose(2, 3, 1, 0)
            ours = conv.forward(x.transpose(0, 2, 3, 1), training=True)
            ours_dx = conv.backward(g.transpose(0, 2, 3, 1))
            for a, b in ((ours, out.transpose(0, 2, 3, 1)), (ours_dx, dx.transpose(0, 2, 3, 1)),
                         (conv.grads["W"], dW.transpose(2, 3, 1, 0))):
                worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
    if worst > 1e-4:
        raise AssertionError(f"naive conv differs from scratchpilot's Conv2D by {worst:.2e}")
    return worst


# ---------------------------------------------------------------- the implementations, timed
def scratchpilot_model(spec):
    """The network as a scratchpilot Sequential (NHWC)."""
    from scratchpilot import nn

    make = {"conv": lambda _, cin, cout, k, pad: nn.Conv2D(cin, cout, k, stride=1, padding=pad),
            "relu": lambda _: nn.ReLU(), "pool": lambda _: nn.MaxPool2D(2), "flatten": lambda _: nn.Flatten(),
            "dense": lambda _, n_in, n_out: nn.Dense(n_in, n_out)}
    return nn.Sequential([make[layer[0]](*layer) for layer in spec], loss=nn.SoftmaxCrossEntropy(),
                         optimizer=nn.SGD(LR, momentum=MOMENTUM), seed=0, input_shape=(28, 28, 1))


def traced_peak_mib(fn):
    """Peak MiB that NumPy/Python allocate while ``fn()`` runs, above what was live before (tracemalloc)."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        fn()
        return (tracemalloc.get_traced_memory()[1] - base) / MIB
    finally:
        tracemalloc.stop()


def time_scratchpilot(spec, X, y, batches):
    """(s/batch of fit over the timed batches, last thread count chosen, its probe medians, peak MiB)."""
    model = scratchpilot_model(spec)
    Xw, Xt = X[:WARMUP * BATCH].reshape(-1, 28, 28, 1), X[WARMUP * BATCH:].reshape(-1, 28, 28, 1)
    model.fit(Xw, y[:WARMUP * BATCH], epochs=1, batch_size=BATCH, progress=False)
    t0 = time.perf_counter()
    model.fit(Xt, y[WARMUP * BATCH:], epochs=1, batch_size=BATCH, progress=False)
    per_batch = (time.perf_counter() - t0) / batches
    tuner = model.thread_tuner
    threads, medians = (tuner.choices[-1][1], tuner.choices[-1][2]) if tuner.choices else (tuner.current, None)
    peak = traced_peak_mib(lambda: model.fit(Xw[:2 * BATCH], y[:2 * BATCH], epochs=1, batch_size=BATCH,
                                             progress=False))
    return per_batch, threads, medians, peak, model.history["loss"][-1]


def torch_net(spec):
    """The network as torch modules (NCHW) with its SGD optimiser and loss."""
    import torch

    make = {"conv": lambda _, cin, cout, k, pad: torch.nn.Conv2d(cin, cout, k, padding=pad),
            "relu": lambda _: torch.nn.ReLU(), "pool": lambda _: torch.nn.MaxPool2d(2),
            "flatten": lambda _: torch.nn.Flatten(), "dense": lambda _, n_in, n_out: torch.nn.Linear(n_in, n_out)}
    torch.manual_seed(0)
    net = torch.nn.Sequential(*(make[layer[0]](*layer) for layer in spec))
    return net, torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM), torch.nn.CrossEntropyLoss()


def torch_steps(net, opt, loss_fn, Xt, yt, batches):
    """Run ``batches`` training steps over consecutive batches of (Xt, yt); returns the last loss."""
    for b in range(batches):
        xb, yb = Xt[b * BATCH:(b + 1) * BATCH], yt[b * BATCH:(b + 1) * BATCH]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
    return float(loss)


def torch_rss_growth_mib(spec, X, y, threads):
    """Run in a fresh process: ru_maxrss growth (MiB) over 3 training steps from a freshly built net."""
    import resource

    import torch

    torch.set_num_threads(threads)
    net, opt, loss_fn = torch_net(spec)
    Xt, yt = torch.from_numpy(X.reshape(-1, 1, 28, 28)), torch.from_numpy(y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch_steps(net, opt, loss_fn, Xt, yt, 3)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def time_torch(spec, X, y, batches):
    """({threads: s/batch} for 1 and 2 threads, the faster count, peak MiB, note), or Nones if no torch."""
    try:
        import torch
    except ImportError:
        return None, None, None, "torch not installed (pip install torch==2.13.0)"
    before, results = torch.get_num_threads(), {}
    Xt, yt = torch.from_numpy(X.reshape(-1, 1, 28, 28)), torch.from_numpy(y)
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            net, opt, loss_fn = torch_net(spec)
            torch_steps(net, opt, loss_fn, Xt, yt, WARMUP)
            t0 = time.perf_counter()
            torch_steps(net, opt, loss_fn, Xt[WARMUP * BATCH:], yt[WARMUP * BATCH:], batches)
            results[threads] = (time.perf_counter() - t0) / batches
    finally:
        torch.set_num_threads(before)
    best = min(results, key=results.get)
    params = sum(p.numel() for p in net.parameters()) * 4 / MIB
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            peak = pool.submit(torch_rss_growth_mib, spec, X[:3 * BATCH], y[:3 * BATCH], best).result()
        memory = (f"peak MiB = ru_maxrss growth over 3 steps in a fresh process (includes gradient and momentum "
                  f"buffers, {2 * params:.1f} MiB, and allocator effects; tracemalloc cannot see torch)")
    except Exception as exc:  # a failed child is not worth losing the timings
        peak, memory = None, f"memory not measured ({type(exc).__name__}: {exc})"
    return results, best, peak, f"best of 1 and 2 threads: {best}; {memory}"


def time_naive(spec, X, y, batches):
    """(s/batch over the timed batches, peak MiB, loss on the first timed batch before and after)."""
    net = NaiveCNN(spec)
    Xn = X.reshape(-1, 1, 28, 28)
    net.train_step(Xn[:BATCH], y[:BATCH])  # one warm-up batch (index arrays, first-touch pages)
    x0, y0 = Xn[BATCH:2 * BATCH], y[BATCH:2 * BATCH]
    before = net.loss_and_grads(x0, y0)[0]
    t0 = time.perf_counter()
    for b in range(1, batches + 1):
        net.train_step(Xn[b * BATCH:(b + 1) * BATCH], y[b * BATCH:(b + 1) * BATCH])
    per_batch = (time.perf_counter() - t0) / batches
    after = net.loss_and_grads(x0, y0)[0]
    peak = traced_peak_mib(lambda: net.train_step(x0, y0))
    return per_batch, peak, before, after


# ---------------------------------------------------------------- the floor
def step_flops(spec, batch=BATCH):
    """FLOPs of every matrix product in one training step (forward, dW and dX; no dX for layer 0)."""
    h, w, flops = 28, 28, 0
    for i, layer in enumerate(spec):
        if layer[0] == "conv":
            _, cin, cout, k, padding = layer
            if padding == "valid":
                h, w = h - k + 1, w - k + 1
            flops += 2 * (batch * h * w) * (k * k * cin) * cout * (3 if i else 2)
        elif layer[0] == "pool":
            h, w = h // 2, w // 2
        elif layer[0] == "dense":
            flops += 2 * batch * layer[1] * layer[2] * (3 if i else 2)
    return flops


def sgemm_gflops(threads=2, repeats=5):
    """This machine's float32 GEMM rate at 1024x1024x1024 with ``threads`` BLAS threads (best of repeats)."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ a
        best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * 1024**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60, help="timed batches (after 5 warm-up batches)")
    parser.add_argument("--naive-batches", type=int, default=5, help="timed batches of the naive CNN")
    parser.add_argument("--json", help="also write the results here (always written to bench/results/)")
    args = parser.parse_args(argv)
    if args.batches < 1 or not 1 <= args.naive_batches <= args.batches + WARMUP - 2:
        parser.error("need --batches >= 1 and 1 <= --naive-batches <= batches + 3")

    (X, y), _ = mnist_features()
    order = np.random.default_rng(0).permutation(len(y))[:(WARMUP + args.batches) * BATCH]
    X, y = np.ascontiguousarray(X[order]), y[order]
    gflops, check = sgemm_gflops(), conv_check()
    results = {"problem": "MNIST CNNs, float32, batch 64, SGD lr 0.01 momentum 0.9, softmax cross-entropy",
               "extrapolated": f"s/epoch = s/batch x {EPOCH_BATCHES} batches, timed over {args.batches} "
                               f"batches (naive: {args.naive_batches}) after warm-up",
               "sgemm_gflops_1024_2_threads": gflops, "naive_conv_check_max_rel_err": check,
               "memory_note": "scratchpilot and naive: tracemalloc peak over a separate short training pass "
                              "(2 batches / 1 batch) after the timed one, so that tracing does not slow the "
                              "timings", "networks": {}}
    rows = []
    for name, spec in NETWORKS.items():
        ours, threads, medians, ours_peak, ours_loss = time_scratchpilot(spec, X, y, args.batches)
        torch_times, torch_threads, torch_peak, torch_note = time_torch(spec, X, y, args.batches)
        naive, naive_peak, loss_before, loss_after = time_naive(spec, X, y, args.naive_batches)
        flops = step_flops(spec)
        floor = flops * EPOCH_BATCHES / (gflops * 1e9)
        torch_s = torch_times[torch_threads] * EPOCH_BATCHES if torch_times else None
        e = {"scratchpilot_s_per_epoch_extrapolated": ours * EPOCH_BATCHES, "scratchpilot_threads": threads,
             "scratchpilot_thread_probe_medians_s": medians, "scratchpilot_peak_mib": ours_peak,
             "scratchpilot_last_train_loss": ours_loss,
             "torch_s_per_epoch_extrapolated": torch_s, "torch_threads": torch_threads,
             "torch_s_per_epoch_by_threads": {t: s * EPOCH_BATCHES for t, s in (torch_times or {}).items()},
             "torch_peak_mib": torch_peak, "torch_note": torch_note,
             "naive_s_per_epoch_extrapolated": naive * EPOCH_BATCHES, "naive_peak_mib": naive_peak,
             "naive_loss_first_batch_before_after": [loss_before, loss_after],
             "naive_note": f"fancy-index im2col + np.add.at col2im, NCHW; 1 warm-up batch, "
                           f"{args.naive_batches} timed",
             "matmul_gflop_per_step": flops / 1e9, "floor_s_per_epoch": floor,
             "torch_over_scratchpilot": torch_s / (ours * EPOCH_BATCHES) if torch_s else None,
             "naive_over_scratchpilot": naive / ours, "scratchpilot_over_floor": ours * EPOCH_BATCHES / floor}
        results["networks"][name] = e
        torch_label = f"pytorch cpu ({torch_threads} thr)" if torch_threads else "pytorch cpu"
        for impl, secs, peak in (("scratchpilot", ours * EPOCH_BATCHES, ours_peak),
                                 (torch_label, torch_s, torch_peak),
                                 ("naive numpy im2col", naive * EPOCH_BATCHES, naive_peak),
                                 ("matmul floor (sgemm 1024^3)", floor, None)):
            rows.append({"network": name, "implementation": impl, "s/epoch (extrapolated)": secs,
                         "x scratchpilot": secs / (ours * EPOCH_BATCHES) if secs else None, "peak MiB": peak})
    print(table(rows, ["network", "implementation", "s/epoch (extrapolated)", "x scratchpilot", "peak MiB"]))
    for name, e in results["networks"].items():
        torch_ratio = f"{e['torch_over_scratchpilot']:.2f}" if e["torch_over_scratchpilot"] else "-"
        print(f"{name}: pytorch / scratchpilot {torch_ratio} (>= 1 means scratchpilot is faster); "
              f"naive / scratchpilot {e['naive_over_scratchpilot']:.1f}; "
              f"scratchpilot / floor {e['scratchpilot_over_floor']:.2f}; scratchpilot used "
              f"{e['scratchpilot_threads']} BLAS threads; naive loss on its first batch "
              f"{loss_str(e['naive_loss_first_batch_before_after'])}; torch: {e['torch_note']}")
    print(f"sgemm 1024^3 at 2 BLAS threads: {gflops:.1f} GFLOP/s; naive conv matches Conv2D to {check:.1e}")
    path = write_result("cnn_speed", results, also=args.json)
    print(f"results: {path}")
    return results


def loss_str(pair) -> str:
    return f"{pair[0]:.3f} -> {pair[1]:.3f}"


if __name__ == "__main__":
    main()
