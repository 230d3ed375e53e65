"""Training speed on MNIST: scratchpilot vs PyTorch CPU vs scikit-learn vs the tutorial's per-sample loop.

The same problem for everyone: 784-100-10, ReLU, softmax cross-entropy, SGD with momentum 0.9, lr 0.05,
float32, one epoch over the 60,000 training images, batch 64 and batch 10. Reports seconds per epoch
(best of ``--repeats``), ratios against scratchpilot, the sgemm rate of this machine at the layer shapes,
and the epoch time that rate implies if nothing but the matrix products cost anything (the floor).

Run: ``python bench/train_speed.py [--repeats 3] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import mnist_features, table, write_result

HIDDEN, CLASSES, LR, MOMENTUM = 100, 10, 0.05, 0.9


def time_scratchpilot(X, y, batch, repeats, skip_zero_columns=False):
    from scratchpilot import nn

    best, acc = np.inf, None
    for r in range(repeats):
        model = nn.Sequential([nn.Dense(784, HIDDEN), nn.ReLU(), nn.Dense(HIDDEN, CLASSES)],
                              loss=nn.SoftmaxCrossEntropy(), optimizer=nn.SGD(LR, momentum=MOMENTUM), seed=r)
        model.layers[0].skip_zero_columns = skip_zero_columns
        t0 = time.perf_counter()
        model.fit(X, y, epochs=1, batch_size=batch, progress=False)
        best = min(best, time.perf_counter() - t0)
        acc = model.history["accuracy"][-1]
    return best, acc


def time_torch(X, y, batch, repeats):
    try:
        import torch
    except ImportError:
        return None, "torch not installed (pip install torch==2.13.0)"
    results = {}
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        best = np.inf
        for r in range(repeats):
            torch.manual_seed(r)
            net = torch.nn.Sequential(torch.nn.Linear(784, HIDDEN), torch.nn.ReLU(),
                                      torch.nn.Linear(HIDDEN, CLASSES))
            opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
            loss_fn = torch.nn.CrossEntropyLoss()
            t0 = time.perf_counter()
            order = torch.randperm(len(yt))
            for i in range(0, len(yt), batch):
                idx = order[i:i + batch]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(Xt[idx]), yt[idx])
                loss.backward()
                opt.step()
            best = min(best, time.perf_counter() - t0)
        results[threads] = best
    threads = min(results, key=results.get)
    return results[threads], f"best of 1 and 2 threads: {threads} ({results[1]:.2f} s vs {results[2]:.2f} s)"


def time_sklearn(X, y, batch, repeats):
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        return None, "scikit-learn not installed"
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    best = np.inf
    for r in range(repeats):
        clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), activation="relu", solver="sgd", alpha=0.0,
                            batch_size=batch, learning_rate_init=LR, momentum=MOMENTUM,
                            nesterovs_momentum=False, max_iter=1, shuffle=True, random_state=r)
        with warnings.catch_warnings(), threadpool_limits(1, "blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            clf.fit(X, y)
            best = min(best, time.perf_counter() - t0)
    return best, f"MLPClassifier, 1 BLAS thread, max_iter=1 (dtype {X.dtype})"


def time_per_sample(X, y, subset=3000):
    """The tutorial's algorithm: backprop one example at a time with (n, 1) column vectors, summing the
    gradients over the mini-batch (here batch 10), then one update. Timed on ``subset`` images and scaled
    to the 60,000 of an epoch."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    sizes = [784, HIDDEN, CLASSES]
    weights = [(rng.standard_normal((o, i)) * np.sqrt(2 / i)).astype(np.float32)
               for i, o in zip(sizes, sizes[1:], strict=False)]
    biases = [np.zeros((o, 1), np.float32) for o in sizes[1:]]
    velocity_w = [np.zeros_like(w) for w in weights]
    velocity_b = [np.zeros_like(b) for b in biases]
    batch = 10
    with threadpool_limits(1, "blas"):
        t0 = time.perf_counter()
        for start in range(0, subset, batch):
            nabla_w = [np.zeros_like(w) for w in weights]
            nabla_b = [np.zeros_like(b) for b in biases]
            for n in range(start, start + batch):
                x = X[n].reshape(784, 1)
                z1 = weights[0] @ x + biases[0]
                a1 = np.maximum(z1, 0)
                z2 = weights[1] @ a1 + biases[1]
                p = np.exp(z2 - z2.max())
                p /= p.sum()
                p[y[n]] -= 1
                nabla_b[1] += p
                nabla_w[1] += p @ a1.T
                d1 = (weights[1].T @ p) * (z1 > 0)
                nabla_b[0] += d1
                nabla_w[0] += d1 @ x.T
            for k in range(2):
                velocity_w[k] = MOMENTUM * velocity_w[k] - LR / batch * nabla_w[k]
                velocity_b[k] = MOMENTUM * velocity_b[k] - LR / batch * nabla_b[k]
                weights[k] += velocity_w[k]
                biases[k] += velocity_b[k]
        seconds = time.perf_counter() - t0
    return seconds * len(y) / subset, f"per-sample loop at batch 10, timed on {subset} images, scaled"


def sgemm_rate(batch, repeats=200):
    """GFLOP/s of this machine's sgemm at the products of one training step, with the BLAS thread count
    that training uses at this batch size (after the same warm-up)."""
    from threadpoolctl import threadpool_limits

    from scratchpilot.nn import threads

    threads.warm_up()
    n_threads = threads.threads_for_batch(batch)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 784), dtype=np.float32)
    W1, W2 = rng.random((784, HIDDEN), dtype=np.float32), rng.random((HIDDEN, CLASSES), dtype=np.float32)
    g1, g2 = rng.random((batch, HIDDEN), dtype=np.float32), rng.random((batch, CLASSES), dtype=np.float32)
    h = rng.random((batch, HIDDEN), dtype=np.float32)
    products = [lambda: x @ W1, lambda: x.T @ g1, lambda: h @ W2, lambda: h.T @ g2, lambda: g2 @ W2.T]
    flops = 2 * batch * (784 * HIDDEN * 2 + HIDDEN * CLASSES * 3)
    with threadpool_limits(n_threads, "blas"):
        for f in products:
            f()
        t0 = time.perf_counter()
        for _ in range(repeats):
            for f in products:
                f()
        seconds_per_step = (time.perf_counter() - t0) / repeats
        big = rng.random((1024, 1024), dtype=np.float32)
        big @ big
        t0 = time.perf_counter()
        for _ in range(5):
            big @ big
        peak = 2 * 1024**3 * 5 / (time.perf_counter() - t0) / 1e9
    return flops / seconds_per_step / 1e9, seconds_per_step, peak, n_threads


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here (always written to bench/results/)")
    args = parser.parse_args(argv)

    (X, y), _ = mnist_features()
    rows, results = [], {"problem": "MNIST 784-100-10 ReLU softmax-CE SGD momentum 0.9 lr 0.05 float32",
                         "batches": {}}
    for batch in (64, 10):
        ours, acc = time_scratchpilot(X, y, batch, args.repeats)
        ours_skip, _ = time_scratchpilot(X, y, batch, args.repeats, skip_zero_columns=True)
        torch_s, torch_note = time_torch(X, y, batch, args.repeats)
        sk_s, sk_note = time_sklearn(X, y, batch, max(1, args.repeats - 1))
        loop_s, loop_note = time_per_sample(X, y) if batch == 10 else (None, "run at batch 10 only")
        rate, step_s, peak, sgemm_threads = sgemm_rate(batch)
        steps = -(-len(y) // batch)
        floor = step_s * steps
        entry = {
            "scratchpilot_s": ours, "scratchpilot_train_accuracy": acc,
            "scratchpilot_zero_column_skip_s": ours_skip,
            "torch_s": torch_s, "torch_note": torch_note, "sklearn_s": sk_s, "sklearn_note": sk_note,
            "per_sample_loop_s": loop_s, "per_sample_note": loop_note,
            "sgemm_gflops_at_layer_shapes": rate, "sgemm_gflops_1024": peak, "matmul_floor_s": floor,
            "sgemm_threads": sgemm_threads,
            "speedup_vs_torch": torch_s / ours if torch_s else None,
            "speedup_vs_torch_with_skip": torch_s / ours_skip if torch_s else None,
            "speedup_vs_sklearn": sk_s / ours if sk_s else None,
            "speedup_vs_per_sample": loop_s / ours if loop_s else None,
        }
        results["batches"][str(batch)] = entry
        for name, secs in (("scratchpilot", ours), ("scratchpilot (zero-column skip on)", ours_skip),
                           ("pytorch cpu", torch_s), ("scikit-learn", sk_s), ("per-sample loop", loop_s),
                           ("matmul floor (dense sgemm)", floor)):
            rows.append({"batch": batch, "implementation": name, "s/epoch": secs,
                         "x scratchpilot": (secs / ours) if secs else None})
    print(table(rows, ["batch", "implementation", "s/epoch", "x scratchpilot"]))
    for batch, e in results["batches"].items():
        print(f"batch {batch}: torch {e['torch_note']}; sgemm ({e['sgemm_threads']} BLAS threads, as in training) "
              f"{e['sgemm_gflops_at_layer_shapes']:.1f} GFLOP/s at the layer shapes, "
              f"{e['sgemm_gflops_1024']:.1f} GFLOP/s at 1024^3")
    path = write_result("train_speed", results, also=args.json)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
