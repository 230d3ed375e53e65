"""``scratchpilot serve --workers N``: connections shared evenly between worker processes, CPU pinning.

Which worker holds a connection is read from Linux's /proc: the server-side socket of each TCP connection
(/proc/net/tcp) and the sockets each worker process has open (/proc/PID/fd).
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from support import wait_until
from web_support import serving, small_model_path, start_serving

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from Linux /proc")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, shared_data) -> Path:
    return small_model_path(tmp_path_factory)


def workers_of(process) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie waits only for its parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed while listing
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def owner(connection: http.client.HTTPConnection, server_port: int, workers: list[int]) -> int:
    """The worker process holding the server's end of ``connection``."""
    client_port = connection.sock.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local_port, remote_port) == (server_port, client_port):
            holders = [pid for pid in workers if int(fields[9]) in socket_inodes(pid)]
            assert len(holders) == 1, holders
            return holders[0]
    raise AssertionError(f"no server socket for client port {client_port}")


def connect(url: str) -> http.client.HTTPConnection:
    """A keep-alive connection that has had one answer (so a worker has adopted it)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    assert response.status == 200 and b'"ok"' in response.read()
    return connection


def test_full_workers_leave_new_connections_waiting(model_path):
    """Past the per-worker connection limit (here 2) the parent stops accepting until one closes."""
    command = [sys.executable, "-c", "import sys; import scratchpilot.web.workers as w; w.CONNECTION_LIMIT = 2; "
                                     "from scratchpilot.cli import main; sys.exit(main())"]
    with serving("--model", str(model_path), "--workers", "2", command=command) as (process, url):
        connections = [connect(url) for _ in range(4)]
        host, port = url.removeprefix("http://").rsplit(":", 1)
        waiting = http.client.HTTPConnection(host, int(port), timeout=1)
        waiting.request("GET", "/healthz")  # the kernel completes the handshake; nobody answers yet
        with pytest.raises(TimeoutError):
            waiting.getresponse()
        connections[0].close()
        waiting.sock.settimeout(10)
        assert waiting.getresponse().status == 200
        for c in [waiting, *connections]:
            c.close()


def allowed_cpus(pid: int) -> str:
    return next(line.split(":")[1].strip() for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("Cpus_allowed_list"))


def test_connections_go_to_the_worker_with_fewest(model_path):
    with serving("--model", str(model_path), "--workers", "2", "--threads", "1") as (process, url):
        port = int(url.rsplit(":", 1)[1])
        workers = workers_of(process)
        connections = [connect(url) for _ in range(8)]
        owners = [owner(c, port, workers) for c in connections]
        # the kernel left alone splits connections as it pleases; the parent hands them out 4 and 4
        assert Counter(owners) == {workers[0]: 4, workers[1]: 4}
        # three of one worker's connections close; a request on its fourth makes it count again
        emptied = owners[0]
        mine = [c for c, o in zip(connections, owners, strict=True) if o == emptied]
        sockets_before = len(socket_inodes(emptied))
        for c in mine[:3]:
            c.close()
        assert wait_until(lambda: len(socket_inodes(emptied)) == sockets_before - 3)
        mine[3].request("GET", "/healthz")
        assert mine[3].getresponse().read()
        # 1 against 4 open: the next three connections all go to the emptied worker
        fresh = [connect(url) for _ in range(3)]
        assert [owner(c, port, workers) for c in fresh] == [emptied] * 3
        for c in fresh + connections:
            c.close()


def test_each_worker_keeps_one_cpu_unless_told_not_to(model_path):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs 2 CPUs")
    with serving("--model", str(model_path), "--workers", "2") as (process, url):
        assert connect(url) and connect(url)  # both workers are up: each has been handed a connection
        assert sorted(allowed_cpus(pid) for pid in workers_of(process)) == [str(cpus[0]), str(cpus[1])]
    with serving("--model", str(model_path), "--workers", "2", "--no-pin") as (process, url):
        parent_cpus = allowed_cpus(process.pid)
        assert [allowed_cpus(pid) for pid in workers_of(process)] == [parent_cpus] * 2
        assert len(parent_cpus) > 1
    # one process: it keeps one CPU itself (its threads would otherwise pass the GIL between cores)
    with serving("--model", str(model_path), "--workers", "1", "--threads", "2") as (process, url):
        assert allowed_cpus(process.pid) == str(cpus[0])
        assert connect(url)


def test_a_dead_worker_stops_the_server_loudly(model_path):
    process, _ = start_serving("--model", str(model_path), "--workers", "2")
    try:
        workers = workers_of(process)
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2 and f"worker process {workers[0]} exited unexpectedly" in stderr, stderr
    assert "Traceback" not in stderr
    assert not running(workers[1])  # the other worker was stopped too


#: a server whose one route takes 1 s: run_server with N workers in a real process, printing its port
SLOW_SERVER = """
import sys, time
from scratchpilot.web.server import run_server
def app(environ, start_response):
    time.sleep(1.0)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "8")])
    return [b"finished"]
run_server(app, port=0, threads=2, workers=int(sys.argv[1]), on_ready=lambda port: print(port, flush=True))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_running_requests_answer(workers):
    """Answers are buffered until waitress's loop sends them, so stopping must still send what finished."""
    process = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(workers)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        answers = []
        client = threading.Thread(target=lambda: answers.append(
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()))
        client.start()
        time.sleep(0.3)  # the request is running
        process.terminate()
        client.join(10)
        assert answers == [b"finished"]
        assert process.wait(timeout=10) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_workers_leave_when_their_parent_is_killed(model_path):
    """A SIGKILLed parent cannot stop its workers; they notice and leave, freeing the port."""
    process, url = start_serving("--model", str(model_path), "--workers", "2")
    try:
        assert connect(url) and connect(url)
        workers = workers_of(process)
        process.kill()
        process.wait(timeout=10)
        assert wait_until(lambda: not any(running(pid) for pid in workers), timeout_s=10)
        port = int(url.rsplit(":", 1)[1])

        def listened_on() -> bool:
            return any(int(line.split()[1].split(":")[1], 16) == port and line.split()[3] == "0A"
                       for line in Path("/proc/net/tcp").read_text().splitlines()[1:])

        assert wait_until(lambda: not listened_on(), timeout_s=5)  # the port is released
    finally:
        if process.poll() is None:
            process.kill()
