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
def im2col_indices(c, k, out_hw):
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
        self.spec, self.params, self.index = spec, [], {}
        for kind, *a in spec:  # He-normal weights (cout, cin, k, k) or (n_in, n_out), zero biases
            if kind not in ("conv", "dense"):
                self.params.append(None)
                continue
            shape, fan_in = ((a[1], a[0], a[2], a[2]), a[0] * a[2] ** 2) if kind == "conv" else (tuple(a), a[0])
            W = rng.standard_normal(shape) * np.sqrt(2 / fan_in)
            self.params.append([W.astype(np.float32), np.zeros(a[1], np.float32)])
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
            self.index[key] = im2col_indices(cin, k, out_hw)
        ch, row, col = self.index[key]
        cols = xp[:, ch, row, col].transpose(1, 2, 0).reshape(cin * k * k, -1)  # (N, K, L) -> (K, L·N)
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
    fn()
    peak = tracemalloc.get_traced_memory()[1] / MIB
    tracemalloc.stop()
    return peak


def time_scratchpilot(spec, X, y, batches):
    """(s/batch of a fit over the timed batches after a warm-up fit, last BLAS thread count the fit's tuner
    chose, {threads: median s} of its last probe, tracemalloc peak MiB of a 2-batch fit, last train loss)."""
    model, X = scratchpilot_model(spec), X.reshape(-1, 28, 28, 1)

    def fit(first, last):
        model.fit(X[first * BATCH:last * BATCH], y[first * BATCH:last * BATCH], epochs=1, batch_size=BATCH,
                  progress=False)

    fit(0, WARMUP)
    t0 = time.perf_counter()
    fit(WARMUP, WARMUP + batches)
    per_batch, tuner, loss = (time.perf_counter() - t0) / batches, model.thread_tuner, model.history["loss"][-1]
    threads, medians = tuner.choices[-1][1:] if tuner.choices else (tuner.current, None)
    return per_batch, threads, medians, traced_peak_mib(lambda: fit(0, 2)), loss


def torch_net(spec):
    """The network as torch modules (NCHW) with its SGD optimiser and loss."""
    import torch

    make = {"conv": lambda _, cin, cout, k, pad: torch.nn.Conv2d(cin, cout, k, padding=pad),
            "relu": lambda _: torch.nn.ReLU(), "pool": lambda _: torch.nn.MaxPool2d(2),
            "flatten": lambda _: torch.nn.Flatten(), "dense": lambda _, n_in, n_out: torch.nn.Linear(n_in, n_out)}
    torch.manual_seed(0)
    net = torch.nn.Sequential(*(make[layer[0]](*layer) for layer in spec))
    return net, torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM), torch.nn.CrossEntropyLoss()


def torch_steps(net, opt, loss_fn, Xt, yt, first, last):
    """Training steps on batches ``first .. last-1`` of (Xt, yt)."""
    for b in range(first, last):
        opt.zero_grad(set_to_none=True)
        loss_fn(net(Xt[b * BATCH:(b + 1) * BATCH]), yt[b * BATCH:(b + 1) * BATCH]).backward()
        opt.step()


def torch_rss_growth_mib(spec, X, y, threads):
    """Run in a fresh process: growth of the peak RSS (VmHWM, first reset through /proc/self/clear_refs)
    over 3 training steps of a newly built net, in MiB (Linux)."""
    import torch

    def vm_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    torch.set_num_threads(threads)
    net, opt, loss_fn = torch_net(spec)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = vm_kib("VmRSS")
    torch_steps(net, opt, loss_fn, torch.from_numpy(X.reshape(-1, 1, 28, 28)), torch.from_numpy(y), 0, 3)
    return (vm_kib("VmHWM") - before) / 1024


def time_torch(spec, X, y, batches):
    """({threads: s/batch} at 1 and 2 threads, the faster count, peak MiB, note); Nones without torch."""
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
            torch_steps(net, opt, loss_fn, Xt, yt, 0, WARMUP)
            t0 = time.perf_counter()
            torch_steps(net, opt, loss_fn, Xt, yt, WARMUP, WARMUP + batches)
            results[threads] = (time.perf_counter() - t0) / batches
    finally:
        torch.set_num_threads(before)
    best = min(results, key=results.get)
    buffers = 2 * sum(p.numel() for p in net.parameters()) * 4 / MIB
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            peak = pool.submit(torch_rss_growth_mib, spec, X[:3 * BATCH], y[:3 * BATCH], best).result()
        memory = (f"peak MiB: growth of peak RSS (VmHWM) over 3 steps of a new net in a fresh process, its "
                  f"gradient and momentum buffers ({buffers:.1f} MiB) included (tracemalloc cannot see torch)")
    except Exception as exc:  # a failed child is not worth losing the timings
        peak, memory = None, f"memory not measured ({type(exc).__name__}: {exc})"
    return results, best, peak, f"best of 1 and 2 threads: {best}; {memory}"


def time_naive(spec, X, y, batches):
    """(s/batch over batches 1..batches after warm-up batch 0, tracemalloc peak MiB of one step,
    loss on batch 1 before and after the timed training)."""
    net, X = NaiveCNN(spec), X.reshape(-1, 1, 28, 28)

    def batch(b):
        return X[b * BATCH:(b + 1) * BATCH], y[b * BATCH:(b + 1) * BATCH]

    net.train_step(*batch(0))
    before = net.loss_and_grads(*batch(1))[0]
    t0 = time.perf_counter()
    for b in range(1, batches + 1):
        net.train_step(*batch(b))
    per_batch = (time.perf_counter() - t0) / batches
    after = net.loss_and_grads(*batch(1))[0]
    return per_batch, traced_peak_mib(lambda: net.train_step(*batch(1))), before, after


# ---------------------------------------------------------------- the floor
def step_flops(spec, batch=BATCH):
    """FLOPs of every matrix product of one training step: forward, dW and dX (none for layer 0)."""
    h, w, flops = 28, 28, 0
    for i, (kind, *a) in enumerate(spec):
        if kind == "conv":
            cin, cout, k, padding = a
            h, w = (h - k + 1, w - k + 1) if padding == "valid" else (h, w)
            flops += 2 * (batch * h * w) * (k * k * cin) * cout * (3 if i else 2)
        elif kind == "pool":
            h, w = h // 2, w // 2
        elif kind == "dense":
            flops += 2 * batch * a[0] * a[1] * (3 if i else 2)
    return flops


def sgemm_gflops(threads=2, repeats=5):
    """This machine's float32 GEMM rate at 1024x1024x1024 with ``threads`` BLAS threads (best of repeats)."""
    from threadpoolctl import threadpool_limits

    a, best = np.random.default_rng(0).random((1024, 1024), dtype=np.float32), np.inf
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ a
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t0)
    return 2 * 1024**3 / best / 1e9


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60, help="timed batches (after 5 warm-up batches)")
    parser.add_argument("--naive-batches", type=int, default=5, help="timed batches of the naive CNN")
    parser.add_argument("--json", help="also write the results here (always written to bench/results/)")
    args = parser.parse_args(argv)
    if args.batches < 1 or not 1 <= args.naive_batches < args.batches + WARMUP:
        parser.error("need --batches >= 1 and 1 <= --naive-batches < batches + 5")

    (X, y), _ = mnist_features()
    order = np.random.default_rng(0).permutation(len(y))[:(WARMUP + args.batches) * BATCH]
    X, y, E = np.ascontiguousarray(X[order]), y[order], EPOCH_BATCHES
    gflops, check = sgemm_gflops(), conv_check()
    results = {"problem": "MNIST CNNs, float32, batch 64, SGD lr 0.01 momentum 0.9, softmax cross-entropy",
               "extrapolated": f"every s/epoch is s/batch x {E} batches, timed over {args.batches} batches "
                               f"(naive: {args.naive_batches}) after warm-up",
               "sgemm_gflops_1024_2_threads": gflops, "naive_conv_vs_conv2d_max_rel_err": check,
               "memory_note": "scratchpilot and naive: tracemalloc peak over a separate short training run "
                              "(a 2-batch fit / 1 step) after the timed one, so that tracing does not slow the "
                              "timings; torch: see torch_note", "networks": {}}
    rows = []
    for name, spec in NETWORKS.items():
        ours, threads, medians, ours_peak, ours_loss = time_scratchpilot(spec, X, y, args.batches)
        torch_b, torch_threads, torch_peak, torch_note = time_torch(spec, X, y, args.batches)
        naive, naive_peak, loss_before, loss_after = time_naive(spec, X, y, args.naive_batches)
        flops = step_flops(spec)
        floor, torch_s = flops * E / (gflops * 1e9), torch_b[torch_threads] * E if torch_b else None
        results["networks"][name] = {
            "scratchpilot_s_per_epoch_extrapolated": ours * E, "scratchpilot_threads": threads,
            "scratchpilot_thread_probe_medians_s": medians, "scratchpilot_peak_mib": ours_peak,
            "scratchpilot_train_loss": ours_loss, "torch_s_per_epoch_extrapolated": torch_s,
            "torch_threads": torch_threads,
            "torch_s_per_epoch_by_threads": {t: v * E for t, v in (torch_b or {}).items()},
            "torch_peak_mib": torch_peak, "torch_note": torch_note,
            "naive_s_per_epoch_extrapolated": naive * E, "naive_peak_mib": naive_peak,
            "naive_loss_batch1_before_after": [loss_before, loss_after],
            "naive_note": f"fancy-index im2col, np.add.at col2im, NCHW; 1 warm-up batch, {args.naive_batches} timed",
            "matmul_gflop_per_step": flops / 1e9, "floor_s_per_epoch": floor,
            "torch_over_scratchpilot": torch_s / (ours * E) if torch_s else None,
            "naive_over_scratchpilot": naive / ours, "scratchpilot_over_floor": ours * E / floor}
        for impl, secs, peak in (("scratchpilot", ours * E, ours_peak),
                                 (f"pytorch cpu ({torch_threads or '-'} thr)", torch_s, torch_peak),
                                 ("naive numpy im2col", naive * E, naive_peak),
                                 ("matmul floor (sgemm 1024^3)", floor, None)):
            rows.append({"network": name, "implementation": impl, "s/epoch (extrapolated)": secs,
                         "x scratchpilot": secs / (ours * E) if secs else None, "peak MiB": peak})
        print(f"{name}: scratchpilot train loss {ours_loss:.3f}, naive loss on batch 1 "
              f"{loss_before:.3f} -> {loss_after:.3f}", flush=True)
    print(table(rows, ["network", "implementation", "s/epoch (extrapolated)", "x scratchpilot", "peak MiB"]))
    for name, e in results["networks"].items():
        ratio = e["torch_over_scratchpilot"]
        print(f"{name}: pytorch / scratchpilot {'-' if ratio is None else f'{ratio:.2f}'} (>= 1.0: scratchpilot "
              f"is faster); naive / scratchpilot {e['naive_over_scratchpilot']:.1f}; scratchpilot / floor "
              f"{e['scratchpilot_over_floor']:.2f} (scratchpilot's BLAS threads: {e['scratchpilot_threads']})\n"
              f"  torch: {e['torch_note']}")
    print(f"sgemm 1024^3 at 2 BLAS threads: {gflops:.1f} GFLOP/s; naive conv = Conv2D to {check:.1e} (relative)")
    path = write_result("cnn_speed", results, also=args.json)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
