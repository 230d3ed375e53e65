"""Load on the digits web server: ``scratchpilot serve`` (waitress) hammered by keep-alive clients.

The server runs as its own process, exactly as a user starts it (``scratchpilot serve --port 0``; BLAS
limited to one thread), on 127.0.0.1. The load generator is one asyncio process holding ``--clients``
keep-alive HTTP/1.1 connections, each sending ``POST /api/predict`` with a JSON body
``{"pixels": [784 numbers]}`` (MNIST test digits, in turn) as soon as its previous answer arrives
(closed loop), for ``--duration`` seconds after a short warm-up. Reports requests per second, latency
percentiles (p50/p90/p99/max), errors (any non-200 answer, refused or dropped connection, timeout) and
how many answers named the digit's true label.

Both processes share this machine's cores, so the client's own CPU use is part of the measurement;
``server_cores`` (CPU seconds per wall second) shows how much CPU the server actually got.

Tuning (``scratchpilot serve``'s defaults come from here): with the GIL, one waitress process uses about
one core whatever its thread count, so a second worker process (``--workers 2``) is what uses the second
core. Each worker is kept on one CPU (``--no-pin`` turns that off) and the parent hands each connection
to the worker with the fewest; 2 threads per worker gave the shortest tail of 1/2/4.

Monitoring (``--monitoring off,on``): the same server with its prediction log and ``/metrics`` (the
defaults of ``scratchpilot serve``) and without them (``--no-log --no-metrics``), alternated ``--repeat``
times in one run so the VM's drift falls on both alike; with monitoring on, ``/metrics`` is scraped
once a second on a connection of its own (its answers are checked, and counted apart from the load).

Run: ``python bench/serve_load.py [--model m.npz] [--clients 32] [--duration 20] [--threads 1,2,4] [--no-pin]
[--monitoring off,on --repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, ensure_data_env, table, write_result

#: targets from the issue
TARGET_RPS, TARGET_P99_MS = 500, 50
COLUMNS = ["monitoring", "workers", "threads", "requests", "req_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms",
           "errors", "logged_records", "metrics_scrapes", "correct_fraction", "server_cores", "client_cores",
           "meets_target"]
#: answers slower than this count as errors (and stop a stuck run)
REQUEST_TIMEOUT_S = 10.0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file (default: the cached default model, trained if missing)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent keep-alive connections (32)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of measured load per run (20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first (2)")
    parser.add_argument("--threads", default="2",
                        help="waitress threads per process; a comma list runs one measurement each (default 2)")
    parser.add_argument("--workers", default="1,2",
                        help="server processes; a comma list runs one measurement each (default 1,2)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="pass --no-pin to the server (workers not kept on one CPU each)")
    parser.add_argument("--monitoring", default="off,on",
                        help="on (the prediction log and /metrics, serve's defaults), off, or off,on to compare "
                             "(default off,on)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the --monitoring settings this many times (1)")
    parser.add_argument("--json", type=Path, help="also write the results here (always: bench/results/serve_load.json)")
    args = parser.parse_args(argv)
    for name in ("threads", "workers"):
        try:
            setattr(args, name, [int(t) for t in str(getattr(args, name)).split(",")])
        except ValueError:
            parser.error(f"--{name} must be integers separated by commas, got {getattr(args, name)!r}")
    args.monitoring = [m.strip() for m in args.monitoring.split(",")]
    if not set(args.monitoring) <= {"on", "off"} or args.repeat < 1:
        parser.error("--monitoring takes on, off or both separated by a comma; --repeat must be ≥ 1")
    if args.clients < 1 or args.duration <= 0 or min(args.threads) < 1 or min(args.workers) < 1:
        parser.error("--clients, --duration, --threads and --workers must be positive")
    return args


# ------------------------------------------------------------------------------------------- server


def start_server(model: Path, threads: int, workers: int, pin: bool = True, monitoring: bool = True,
                 log_dir: str | None = None) -> tuple[subprocess.Popen, str]:
    """``scratchpilot serve`` on a free port of 127.0.0.1; returns the process and its base URL."""
    command = [sys.executable, "-c", "import sys; from scratchpilot.cli import main; sys.exit(main())",
               "serve", "--model", str(model), "--host", "127.0.0.1", "--port", "0", "--threads", str(threads),
               "--workers", str(workers)] + ([] if pin else ["--no-pin"])
    command += ["--log", log_dir] if monitoring else ["--no-log", "--no-metrics"]
    # stderr goes to a file: an unread pipe fills up under load and then blocks the server's logging
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    process.log = log
    for line in process.stdout:  # the server prints two lines, the second once it accepts connections
        if "serving on " in line:
            return process, line.split("serving on ")[1].split()[0].rstrip("/")
    process.wait()
    log.seek(0)
    raise RuntimeError(f"server did not start: {log.read()[-2000:]}")


def stop_server(process: subprocess.Popen) -> str:
    """Stop the server; returns what it wrote to stderr."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.log.seek(0)
    return process.log.read()


# ------------------------------------------------------------------------------------------- client


def request_bytes(host: str, port: int, body: bytes) -> bytes:
    head = (f"POST /api/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


class KeepAliveClient(asyncio.Protocol):
    """One keep-alive connection sending requests back to back (closed loop) until ``stop_at``.

    A bare protocol rather than streams with ``wait_for`` per request: a load generator sharing the
    server's two cores should cost as little CPU as it can (streams cost about 3 times as much per
    request), since every core-second it takes is one the server does not get.
    """

    def __init__(self, requests: list[bytes], labels: np.ndarray, offset: int, run: dict, stats: dict):
        self.requests, self.labels, self.i, self.run, self.stats = requests, labels, offset, run, stats
        self.buffer = bytearray()
        self.started = None  # when the request in flight was sent
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        if time.perf_counter() >= self.run["stop_at"]:
            self.started = None
            self.transport.close()
            return
        self.started = time.perf_counter()
        self.transport.write(self.requests[self.i % len(self.requests)])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1").split("\r\n")
        length = next((int(line.partition(":")[2]) for line in head[1:]
                       if line.partition(":")[0].strip().lower() == "content-length"), 0)
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        status = int(head[0].split()[1])
        try:
            right = status == 200 and json.loads(body)["label"] == self.labels[self.i % len(self.requests)]
        except (ValueError, KeyError):
            status, right = "bad answer", False
        self.record(status, right)
        self.i += 1
        self.send()

    def record(self, status, right: bool) -> None:
        """One answer (or failure): its latency counts if it lies inside the measured window; a failure
        counts as an error whenever it is noticed after warm-up (a hung server's timeouts come late)."""
        finished = time.perf_counter()
        if self.started is not None and self.started >= self.run["measure_from"] and finished <= self.run["stop_at"]:
            self.stats["latencies"].append(finished - self.started)
            self.stats["correct"] += right
        if status != 200 and finished >= self.run["measure_from"]:
            self.stats["errors"][str(status)] = self.stats["errors"].get(str(status), 0) + 1

    def fail(self, kind: str) -> None:
        """Count the request in flight as an error and drop the connection (the client reconnects)."""
        if self.started is not None:
            self.record(kind, False)
            self.started = None
        self.transport.abort()

    def connection_lost(self, exc) -> None:
        if self.started is not None:  # the server closed the connection with a request unanswered
            self.record(type(exc).__name__ if exc else "connection closed", False)
            self.started = None  # counted once: the watchdog must not time it out again
        if not self.closed.done():
            self.closed.set_result(None)


async def client(host: str, port: int, requests: list[bytes], labels: np.ndarray, offset: int, run: dict,
                 stats: dict, connections: set) -> None:
    """Keep one connection busy until the end, reconnecting after errors."""
    loop = asyncio.get_running_loop()
    while time.perf_counter() < run["stop_at"]:
        try:
            _, protocol = await asyncio.wait_for(loop.create_connection(
                functools.partial(KeepAliveClient, requests, labels, offset, run, stats), host, port),
                REQUEST_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            if time.perf_counter() >= run["measure_from"]:
                stats["errors"][type(exc).__name__] = stats["errors"].get(type(exc).__name__, 0) + 1
            await asyncio.sleep(0.01)
            continue
        connections.add(protocol)
        await protocol.closed
        connections.discard(protocol)
        offset = protocol.i + 1


async def watchdog(connections: set, run: dict) -> None:
    """Once a second, time out requests unanswered for REQUEST_TIMEOUT_S (one timer, not one per request)."""
    while True:
        await asyncio.sleep(1.0)
        now = time.perf_counter()
        for protocol in list(connections):
            if protocol.started is not None and now - protocol.started > REQUEST_TIMEOUT_S:
                protocol.fail("TimeoutError")


async def scrape_metrics(host: str, port: int, run: dict, stats: dict) -> None:
    """GET /metrics once a second on one keep-alive connection of its own, as Prometheus would."""
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    try:
        while time.perf_counter() < run["stop_at"]:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            body = await reader.readexactly(length)
            # the first scrape may come before any count was handed over (a page with no samples yet)
            ok = head.startswith(b"HTTP/1.1 200") and (b"scratchpilot_requests_total" in body
                                                       or not stats["scrapes"])
            stats["scrapes"].append((time.perf_counter() - started, ok))
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))
    finally:
        writer.close()


async def load(url: str, requests: list[bytes], labels: np.ndarray, clients: int, warmup: float,
               duration: float, scrape: bool = False) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    requests = [request_bytes(host, int(port), body) for body in requests]
    stats = {"latencies": [], "errors": {}, "correct": 0, "scrapes": []}
    start = time.perf_counter()
    run = {"measure_from": start + warmup, "stop_at": start + warmup + duration}
    connections: set = set()  # the open ones
    guard = asyncio.ensure_future(watchdog(connections, run))
    tasks = [client(host, int(port), requests, labels, c * 7, run, stats, connections) for c in range(clients)]
    if scrape:
        tasks.append(scrape_metrics(host, int(port), run, stats))
    try:
        # bounded: even if the server hangs, every client gives up REQUEST_TIMEOUT_S after the end
        await asyncio.wait_for(asyncio.gather(*tasks), warmup + duration + 2 * REQUEST_TIMEOUT_S)
    finally:
        guard.cancel()
    return stats


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used by a process and its live children (Linux /proc; NaN elsewhere)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total = 0.0
        for process in [pid, *map(int, children)]:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except OSError:
        return float("nan")
    return total / os.sysconf("SC_CLK_TCK")


def measure(model: Path, workers: int, threads: int, bodies: list[bytes], labels: np.ndarray, args,
            monitoring: bool = True) -> dict:
    log_dir = tempfile.mkdtemp(prefix="serve-load-log-")
    process, url = start_server(model, threads, workers, args.pin, monitoring, log_dir)
    try:
        server_cpu0, client_cpu0 = cpu_seconds(process.pid), time.process_time()
        stats = asyncio.run(load(url, bodies, labels, args.clients, args.warmup, args.duration, scrape=monitoring))
        server_cpu = cpu_seconds(process.pid) - server_cpu0
        client_cpu = time.process_time() - client_cpu0
    finally:
        stopping = time.perf_counter()
        server_log = stop_server(process)
        stop_s = time.perf_counter() - stopping
    latencies_ms = np.array(stats["latencies"]) * 1e3
    n = len(latencies_ms)
    errors = sum(stats["errors"].values())
    elapsed = args.warmup + args.duration
    logged = sum(1 for f in Path(log_dir).glob("*.jsonl") for _ in open(f, "rb"))
    import shutil

    shutil.rmtree(log_dir, ignore_errors=True)
    scrapes = stats["scrapes"]
    return {
        "monitoring": "on" if monitoring else "off",
        "logged_records": logged,
        "metrics_scrapes": len(scrapes),
        "metrics_scrape_failures": sum(1 for _, ok in scrapes if not ok),
        "metrics_scrape_max_ms": max((s for s, _ in scrapes), default=0.0) * 1e3,
        "workers": workers,
        "threads": threads,
        "pinned": args.pin,
        "clients": args.clients,
        "seconds": args.duration,
        "requests": n,
        "req_per_s": n / args.duration,
        "p50_ms": float(np.percentile(latencies_ms, 50)) if n else None,
        "p90_ms": float(np.percentile(latencies_ms, 90)) if n else None,
        "p99_ms": float(np.percentile(latencies_ms, 99)) if n else None,
        "max_ms": float(latencies_ms.max()) if n else None,
        "errors": errors,
        "error_kinds": stats["errors"],
        "correct_fraction": stats["correct"] / n if n else None,
        # cores busy over warm-up + measurement, from CPU time: shows how much the client took
        "server_cores": server_cpu / elapsed,
        "client_cores": client_cpu / elapsed,
        # SIGTERM to exit, right after the load: running requests finish and their answers go out first
        "stop_s": stop_s,
        "server_log_tail": server_log[-1000:],
    }


def main(argv=None) -> int:
    args = parse_args([] if argv is None else argv)
    ensure_data_env()
    from scratchpilot.data import load_mnist

    if args.model:
        model = Path(args.model)
    else:
        from scratchpilot.digits.models import ensure_default_model

        model = ensure_default_model(progress=True)
    _, (images, labels) = load_mnist("digits", download=False, progress=False)
    bodies = [json.dumps({"pixels": digit.reshape(-1).tolist()}).encode() for digit in images[:500]]
    print(f"model {model}; {args.clients} keep-alive clients, {args.duration:g} s per run "
          f"(+{args.warmup:g} s warm-up), JSON pixel requests; {os.cpu_count()} CPUs shared by server and client")
    rows = []
    plan = [(w, t, m) for w in args.workers for t in args.threads for _ in range(args.repeat) for m in args.monitoring]
    for workers, threads, monitoring in plan:
        row = measure(model, workers, threads, bodies, labels[:500], args, monitoring == "on")
        row["meets_target"] = (row["req_per_s"] >= TARGET_RPS and row["p99_ms"] is not None
                               and row["p99_ms"] < TARGET_P99_MS and row["errors"] == 0
                               and row["metrics_scrape_failures"] == 0)
        rows.append(row)
        print(table([row], COLUMNS), flush=True)
    payload = {"benchmark": "serve_load", "model": str(model), "target": {"req_per_s": TARGET_RPS,
               "p99_ms": TARGET_P99_MS, "errors": 0}, "load_average": os.getloadavg(), "runs": rows}
    if len(set(args.monitoring)) == 2:
        payload["monitoring_ratio"] = _ratios(rows)
        for key, value in payload["monitoring_ratio"].items():
            print(f"{key}: monitoring on / off = {value['ratio']:.3f} (on {value['on']:.0f}, off {value['off']:.0f} "
                  f"req/s, medians of {value['pairs']} runs each)")
    path = write_result("serve_load", payload, also=args.json)
    print(f"results: {path.relative_to(REPO)}")
    return 0 if all(row["errors"] == 0 for row in rows) else 1


def _ratios(rows: list[dict]) -> dict:
    """Throughput with monitoring on over off, per workers × threads: the medians of the alternated runs."""
    out = {}
    for key in sorted({(r["workers"], r["threads"]) for r in rows}):
        on = [r["req_per_s"] for r in rows if (r["workers"], r["threads"]) == key and r["monitoring"] == "on"]
        off = [r["req_per_s"] for r in rows if (r["workers"], r["threads"]) == key and r["monitoring"] == "off"]
        if on and off:
            out[f"{key[0]} workers × {key[1]} threads"] = {"on": float(np.median(on)), "off": float(np.median(off)),
                                                         "ratio": float(np.median(on) / np.median(off)),
                                                         "pairs": min(len(on), len(off))}
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
