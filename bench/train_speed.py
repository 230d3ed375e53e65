"""Training speed on MNIST: scratchpilot vs PyTorch CPU vs scikit-learn vs the tutorial's per-sample loop.

The same problem for everyone: 784-100-10, ReLU, softmax cross-entropy, SGD with momentum 0.9, lr 0.05,
float32, one epoch over the 60,000 training images, batch 64 and batch 10. scratchpilot and PyTorch report
the median (with min and max) of ``--repeats`` independent runs, PyTorch taking the better of 1 and 2
threads in each run; scikit-learn and the zero-column skip report the best run. Also: the same at batch 64
with a second process keeping one core busy, the sgemm rate of this machine at the layer shapes at 1 and 2
threads with the epoch time it implies if nothing but the matrix products cost anything (the floor), and
the tutorial's own set-up (784-30-10 sigmoid, quadratic cost, batch 10, eta 3.0) trained by
``nn.Network.SGD`` and by a per-sample backprop loop written in the tutorial's style.

Run: ``python bench/train_speed.py [--repeats 3] [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import time

import numpy as np
from _common import mnist_features, table, write_result

HIDDEN, CLASSES, LR, MOMENTUM = 100, 10, 0.05, 0.9
BUSY_SECONDS = 600  # the busy process exits by itself after this long, even if the bench dies


def _stats(runs) -> dict:
    return {"median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs), "runs_s": list(runs)}


def _chosen(tuner) -> list[int]:
    return [threads for _, threads, _ in tuner.choices]


def scratchpilot_epoch(X, y, batch, seed, sparse=False):
    """Seconds for one ``Sequential.fit`` epoch (threads="auto", so the tuner's probing is included);
    returns (seconds, train accuracy, thread counts the tuner chose)."""
    from scratchpilot import nn
    from scratchpilot.nn import fast

    first = fast.SparseInputDense(784, HIDDEN) if sparse else nn.Dense(784, HIDDEN)
    model = nn.Sequential([first, nn.ReLU(), nn.Dense(HIDDEN, CLASSES)],
                          loss=nn.SoftmaxCrossEntropy(), optimizer=nn.SGD(LR, momentum=MOMENTUM), seed=seed)
    t0 = time.perf_counter()
    model.fit(X, y, epochs=1, batch_size=batch, progress=False)
    seconds = time.perf_counter() - t0
    return seconds, model.history["accuracy"][-1], _chosen(model.thread_tuner)


def time_scratchpilot(X, y, batch, repeats, sparse=False) -> dict:
    """``repeats`` independent epochs (seeds 0..repeats-1): times, last accuracy, the tuner's choices."""
    runs = [scratchpilot_epoch(X, y, batch, r, sparse) for r in range(repeats)]
    return {**_stats([s for s, _, _ in runs]), "train_accuracy": runs[-1][1],
            "threads_chosen": [c for _, _, c in runs]}


def torch_epoch(torch, Xt, yt, batch, seed, threads) -> float:
    """Seconds for one epoch of the same MLP in PyTorch at ``threads`` intra-op threads (shuffle included)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(784, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))
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
    return time.perf_counter() - t0


def time_torch(X, y, batch, repeats) -> dict | None:
    """Per run, one epoch at 1 and one at 2 threads; the run's time is the better of the two. Returns the
    statistics of those per-run bests plus the median at each thread count (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    before = torch.get_num_threads()
    try:
        per_threads = {t: [] for t in (1, 2)}
        for r in range(repeats):
            for t in per_threads:
                per_threads[t].append(torch_epoch(torch, Xt, yt, batch, r, t))
    finally:
        torch.set_num_threads(before)
    best = [min(a, b) for a, b in zip(per_threads[1], per_threads[2], strict=True)]
    return {**_stats(best), "median_1_thread_s": statistics.median(per_threads[1]),
            "median_2_threads_s": statistics.median(per_threads[2]),
            "best_threads_per_run": [1 if a <= b else 2 for a, b in zip(*per_threads.values(), strict=True)]}


def time_sklearn(X, y, batch, repeats):
    """Best of ``repeats`` one-epoch ``MLPClassifier.fit`` calls at 1 BLAS thread."""
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
    """The tutorial's algorithm on this problem: backprop one example at a time with (n, 1) column vectors,
    summing the gradients over the mini-batch (here batch 10), then one momentum update. Timed on
    ``subset`` images at 1 BLAS thread and scaled to the images of an epoch."""
    from threadpoolctl import threadpool_limits

    subset = min(subset, len(y))
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


def sgemm_rate(batch, threads, repeats=200):
    """GFLOP/s of this machine's sgemm at the five products of one training step of 784-100-10 at
    ``batch``, at ``threads`` BLAS threads after ``fast.warm_up``; also the seconds per step and the rate
    of a 1024^3 product."""
    from scratchpilot.nn import fast

    fast.warm_up(threads)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 784), dtype=np.float32)
    W1, W2 = rng.random((784, HIDDEN), dtype=np.float32), rng.random((HIDDEN, CLASSES), dtype=np.float32)
    g1, g2 = rng.random((batch, HIDDEN), dtype=np.float32), rng.random((batch, CLASSES), dtype=np.float32)
    h = rng.random((batch, HIDDEN), dtype=np.float32)
    products = [lambda: x @ W1, lambda: x.T @ g1, lambda: h @ W2, lambda: h.T @ g2, lambda: g2 @ W2.T]
    flops = 2 * batch * (784 * HIDDEN * 2 + HIDDEN * CLASSES * 3)
    with fast.blas_threads(threads):
        for f in products:
            f()
        t0 = time.perf_counter()
        for _ in range(repeats):
            for f in products:
                f()
        step_s = (time.perf_counter() - t0) / repeats
        big = rng.random((1024, 1024), dtype=np.float32)
        big @ big
        t0 = time.perf_counter()
        for _ in range(5):
            big @ big
        peak = 2 * 1024**3 * 5 / (time.perf_counter() - t0) / 1e9
    return {"gflops_at_layer_shapes": flops / step_s / 1e9, "step_s": step_s, "gflops_1024": peak}


@contextlib.contextmanager
def busy_core(seconds=BUSY_SECONDS):
    """A second process spinning on one core for the duration of the block (at most ``seconds``)."""
    spin = f"import time\nt = time.time()\nwhile time.time() - t < {seconds}: pass"
    proc = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def time_busy(X, y, repeats, batch=64) -> dict:
    """Batch-64 epochs with one core kept busy by another process: scratchpilot (threads="auto") and
    PyTorch at 1 and 2 threads, ``repeats`` runs each under the same load."""
    with busy_core():
        ours = time_scratchpilot(X, y, batch, repeats)
        torch_r = time_torch(X, y, batch, repeats)
    return {"scratchpilot": ours, "torch": torch_r,
            "speedup_vs_torch": torch_r["median_s"] / ours["median_s"] if torch_r else None}


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def tutorial_loop(train, test, eta=3.0, m=10, seed=0, dtype=np.float64):
    """One epoch of the tutorial's algorithm, example by example: ``train`` a list of ((784, 1) x,
    one-hot (10, 1) y) and ``test`` of (x, label); returns (seconds for the epoch, test accuracy)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    sizes = [784, 30, 10]
    b = [rng.standard_normal((n, 1)).astype(dtype) for n in sizes[1:]]
    w = [rng.standard_normal((n_out, n_in)).astype(dtype) for n_in, n_out in zip(sizes, sizes[1:], strict=False)]

    def backprop(x, y):
        # feedforward, keeping every weighted input z and activation a
        a, activations, zs = x, [x], []
        for bl, wl in zip(b, w, strict=True):
            z = wl @ a + bl
            a = _sigmoid(z)
            zs.append(z)
            activations.append(a)
        grad_b, grad_w = [None] * len(b), [None] * len(w)
        s = _sigmoid(zs[-1])
        delta = (activations[-1] - y) * s * (1 - s)  # delta^L = (a - y) * sigma'(z^L)
        grad_b[-1], grad_w[-1] = delta, delta @ activations[-2].T
        for layer in range(len(w) - 2, -1, -1):  # delta^l = (w^{l+1}.T delta^{l+1}) * sigma'(z^l)
            s = _sigmoid(zs[layer])
            delta = (w[layer + 1].T @ delta) * s * (1 - s)
            grad_b[layer], grad_w[layer] = delta, delta @ activations[layer].T
        return grad_b, grad_w

    with threadpool_limits(1, "blas"), np.errstate(over="ignore"):
        t0 = time.perf_counter()
        order = rng.permutation(len(train))
        for start in range(0, len(train), m):
            batch = [train[k] for k in order[start:start + m]]
            sum_b, sum_w = [np.zeros_like(bl) for bl in b], [np.zeros_like(wl) for wl in w]
            for x, y in batch:
                grad_b, grad_w = backprop(x, y)
                sum_b = [s + g for s, g in zip(sum_b, grad_b, strict=True)]
                sum_w = [s + g for s, g in zip(sum_w, grad_w, strict=True)]
            b = [bl - (eta / len(batch)) * s for bl, s in zip(b, sum_b, strict=True)]
            w = [wl - (eta / len(batch)) * s for wl, s in zip(w, sum_w, strict=True)]
        seconds = time.perf_counter() - t0
        correct = 0
        for x, label in test:
            a = x
            for bl, wl in zip(b, w, strict=True):
                a = _sigmoid(wl @ a + bl)
            correct += int(np.argmax(a) == label)
    return seconds, correct / len(test)


def time_tutorial(X, y, X_test, y_test, repeats) -> dict:
    """The tutorial's set-up (784-30-10 sigmoid, quadratic cost, N(0, 1) init, batch 10, eta 3.0, one
    epoch): ``nn.Network.SGD`` (median of ``repeats`` runs, seeds 0..) against one epoch of the per-sample
    loop in float64 at 1 BLAS thread; times and test accuracies."""
    from scratchpilot import nn

    runs, accs, chosen = [], [], []
    for r in range(repeats):
        net = nn.Network([784, 30, 10], seed=r)
        with contextlib.redirect_stdout(io.StringIO()) as said:  # it prints "Epoch 0 complete"
            t0 = time.perf_counter()
            net.SGD((X, y), epochs=1, mini_batch_size=10, eta=3.0)
            runs.append(time.perf_counter() - t0)
        assert "Epoch 0 complete" in said.getvalue()
        accs.append(net.evaluate((X_test, y_test)) / len(y_test))
        chosen.append(_chosen(net.model.thread_tuner))
    X64, Xt64 = X.astype(np.float64), X_test.astype(np.float64)
    eye = np.eye(10)
    train = [(X64[n].reshape(784, 1), eye[y[n]].reshape(10, 1)) for n in range(len(y))]
    test = [(Xt64[n].reshape(784, 1), int(y_test[n])) for n in range(len(y_test))]
    loop_s, loop_acc = tutorial_loop(train, test)
    ours = {**_stats(runs), "test_accuracy": statistics.median(accs), "test_accuracies": accs,
            "threads_chosen": chosen}
    return {"problem": f"784-30-10 sigmoid quadratic N(0,1) batch 10 eta 3.0, one epoch of {len(y)} images",
            "scratchpilot": ours,
            "per_sample": {"seconds": loop_s, "test_accuracy": loop_acc,
                           "note": "own per-sample loop, float64 as in the tutorial, 1 BLAS thread, one run"},
            "speedup_vs_per_sample": loop_s / ours["median_s"]}


def _threads_note(chosen) -> str:
    return "; ".join(",".join(map(str, c)) or "-" for c in chosen)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 repeat, 6,000 training images")
    parser.add_argument("--json", help="also write the results here (always written to bench/results/)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else max(1, args.repeats)

    (X, y), (X_test, y_test) = mnist_features()
    if args.quick:
        X, y = X[:6000], y[:6000]
    steps_note = f"{len(y)} training images, median of {repeats} runs"
    results = {"problem": "MNIST 784-100-10 ReLU softmax-CE SGD momentum 0.9 lr 0.05 float32",
               "quick": args.quick, "images": len(y), "repeats": repeats, "batches": {}}
    rows = []
    for batch in (64, 10):
        ours = time_scratchpilot(X, y, batch, repeats)
        skip = time_scratchpilot(X, y, batch, repeats, sparse=True)
        torch_r = time_torch(X, y, batch, repeats)
        sk_s, sk_note = time_sklearn(X, y, batch, max(1, repeats - 1))
        loop_s, loop_note = time_per_sample(X, y) if batch == 10 else (None, "run at batch 10 only")
        sgemm = {t: sgemm_rate(batch, t) for t in (2, 1)}
        steps = -(-len(y) // batch)
        floor_threads = min(sgemm, key=lambda t: sgemm[t]["step_s"])
        floor = sgemm[floor_threads]["step_s"] * steps
        med = ours["median_s"]
        results["batches"][str(batch)] = {
            "scratchpilot": ours, "scratchpilot_zero_column_skip_best_s": skip["min_s"],
            "torch": torch_r, "sklearn_s": sk_s, "sklearn_note": sk_note,
            "per_sample_loop_s": loop_s, "per_sample_note": loop_note,
            "sgemm": {str(t): v for t, v in sgemm.items()}, "matmul_floor_s": floor,
            "matmul_floor_threads": floor_threads,
            "speedup_vs_torch": torch_r["median_s"] / med if torch_r else None,
            "speedup_vs_torch_with_skip": torch_r["median_s"] / skip["min_s"] if torch_r else None,
            "speedup_vs_sklearn": sk_s / med if sk_s else None,
            "speedup_vs_per_sample": loop_s / med if loop_s else None,
        }
        rows.append({"batch": batch, "implementation": "scratchpilot (auto threads)", "s/epoch": med,
                     "min": ours["min_s"], "max": ours["max_s"], "x scratchpilot": 1.0})
        if torch_r:
            rows.append({"batch": batch, "implementation": "pytorch cpu (best of 1, 2 threads)",
                         "s/epoch": torch_r["median_s"], "min": torch_r["min_s"], "max": torch_r["max_s"],
                         "x scratchpilot": torch_r["median_s"] / med})
        for name, secs in (("scratchpilot (zero-column skip, best)", skip["min_s"]),
                           ("scikit-learn (best)", sk_s), ("per-sample loop (scaled)", loop_s),
                           (f"matmul floor (dense sgemm, {floor_threads} thr)", floor)):
            rows.append({"batch": batch, "implementation": name, "s/epoch": secs,
                         "x scratchpilot": (secs / med) if secs else None})

    busy = results["busy_core_64"] = time_busy(X, y, repeats)
    bo, bt = busy["scratchpilot"], busy["torch"]
    rows.append({"batch": "64 busy", "implementation": "scratchpilot (auto threads)", "s/epoch": bo["median_s"],
                 "min": bo["min_s"], "max": bo["max_s"], "x scratchpilot": 1.0})
    if bt:
        for name, secs in (("pytorch 1 thread", bt["median_1_thread_s"]),
                           ("pytorch 2 threads", bt["median_2_threads_s"])):
            rows.append({"batch": "64 busy", "implementation": name, "s/epoch": secs,
                         "x scratchpilot": secs / bo["median_s"]})
        rows.append({"batch": "64 busy", "implementation": "pytorch (best of 1, 2 threads)",
                     "s/epoch": bt["median_s"], "min": bt["min_s"], "max": bt["max_s"],
                     "x scratchpilot": busy["speedup_vs_torch"]})
    print(table(rows, ["batch", "implementation", "s/epoch", "min", "max", "x scratchpilot"]))
    print(f"({steps_note}; x scratchpilot = seconds / scratchpilot's median, above 1.0: scratchpilot faster)")
    for batch, e in results["batches"].items():
        t = e["torch"]
        torch_note = (f"torch median at 1 thread {t['median_1_thread_s']:.2f} s, at 2 {t['median_2_threads_s']:.2f}"
                      f" s, ratio of medians {e['speedup_vs_torch']:.2f}" if t else "torch not installed")
        sg = "; ".join(f"{k} thr {v['gflops_at_layer_shapes']:.1f} GFLOP/s at the layer shapes, "
                       f"{v['gflops_1024']:.1f} at 1024^3" for k, v in e["sgemm"].items())
        print(f"batch {batch}: {torch_note}; tuner chose {_threads_note(e['scratchpilot']['threads_chosen'])}; "
              f"sgemm {sg}")
    print(f"busy core, batch 64: torch best / scratchpilot = {busy['speedup_vs_torch'] or float('nan'):.2f}; "
          f"tuner chose {_threads_note(bo['threads_chosen'])} threads")

    tut = results["tutorial"] = time_tutorial(X, y, X_test, y_test, repeats)
    ts, tp = tut["scratchpilot"], tut["per_sample"]
    print(f"\nthe tutorial's set-up: {tut['problem']}")
    print(table([{"implementation": "scratchpilot nn.Network.SGD", "s/epoch": ts["median_s"], "min": ts["min_s"],
                  "max": ts["max_s"], "test accuracy": ts["test_accuracy"], "x scratchpilot": 1.0},
                 {"implementation": "per-sample loop (float64, 1 thread)", "s/epoch": tp["seconds"],
                  "test accuracy": tp["test_accuracy"], "x scratchpilot": tut["speedup_vs_per_sample"]}],
                ["implementation", "s/epoch", "min", "max", "test accuracy", "x scratchpilot"]))
    print(f"speed-up of scratchpilot over the per-sample loop: {tut['speedup_vs_per_sample']:.1f}x (target >= 10x)")
    # a smoke test's timings are meaningless: keep them out of the real results file
    path = write_result("train_speed_quick" if args.quick else "train_speed", results, also=args.json)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
