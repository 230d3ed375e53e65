"""Several waitress processes behind one port, each connection handed to the least busy one.

Python runs one thread at a time per process, so one waitress process uses about one core; forked
workers use the others. The usual way to share a port (every worker accepting on one listening socket)
leaves the split to whichever process wakes first, which can be far from even, and then the clients of
the busier worker wait longer (figures in bench/results/notes.md). Here the parent process
accepts every connection and passes its file descriptor (``SCM_RIGHTS`` over a Unix socket pair) to the
worker with the fewest open connections, ties in turn.

Bookkeeping needs no locks: the parent counts what it handed to each worker, each worker
publishes how many of those have closed (an 8-byte slot in shared memory written only by it), and
open = handed − closed (an upper bound, at most one turn of the worker's loop old).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import select
import signal
import socket
import threading
import time
import traceback

from .connections import CONNECTION_LIMIT, connection_limit

#: at shutdown: how long answers already computed may take to go out, and how long workers get to exit
DRAIN_S = 2.0
STOP_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)


def serve_workers(make_server, workers: int, host: str, port: int, on_ready=None, pin: bool = True) -> None:
    """Serve with ``workers`` forked processes until interrupted (Ctrl+C or SIGTERM).

    Parameters
    ----------
    make_server : called in each worker with ``sockets=[...]`` and ``socket_map={...}``; returns a waitress
        server (see :func:`scratchpilot.web.server.make_server`). The app is loaded before forking.
    workers, host, port : as ``scratchpilot serve``; port 0 picks a free one.
    on_ready : called with the port listened on once connections are accepted.
    pin : keep each worker on one CPU of those this process may use (Linux), worker *i* on the *i*-th.
        A process's threads share one GIL; spread over cores, every hand-over of it crosses cores.

    Raises
    ------
    OSError
        If the port cannot be bound, or the OS cannot fork.
    RuntimeError
        If a worker exits on its own (all the others are then stopped).
    """
    if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
        raise OSError("more than one worker needs os.fork and socket.send_fds (Linux or macOS)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=1024)
    closed_counts = memoryview(mmap.mmap(-1, 8 * workers)).cast("q")  # shared with the children after fork
    parent = os.getpid()
    children: list[int] = []
    handoffs: list[socket.socket] = []
    accept_failure: list[BaseException] = []
    stopping = threading.Event()
    previous_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def accept() -> None:
        # signals are the main thread's to handle: there they interrupt os.wait() below
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            _hand_out(listener, handoffs, closed_counts, stopping)
        except Exception as exc:  # a bug or an unexpected error: stop the server rather than leave it deaf
            accept_failure.append(exc)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    try:
        for index in range(workers):
            # datagrams: one connection per message, so descriptors never merge across messages
            parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            pid = os.fork()
            if pid == 0:  # a worker: serve until the parent says stop, never return into the caller
                status = 1
                try:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl+C for the group
                    signal.signal(signal.SIGTERM, stop_on_signal)  # from the parent: finish, send, then leave
                    parent_end.close()
                    for other in handoffs:
                        other.close()
                    if pin:  # the parent is not pinned, so each worker counts from the same CPUs
                        pin_to_cpu(index)
                    _serve_handed_connections(make_server, listener, worker_end, closed_counts, index, parent)
                    status = 0
                except Exception:  # say why, then leave: a worker must never return into the caller
                    traceback.print_exc()
                finally:
                    os._exit(status)
            worker_end.close()
            children.append(pid)
            handoffs.append(parent_end)
        signal.signal(signal.SIGTERM, stop_on_signal)
        threading.Thread(target=accept, name="accept", daemon=True).start()
        if on_ready:
            on_ready(listener.getsockname()[1])
        pid, status = os.wait()  # returns only if a worker dies: then stop them all, loudly
        children.remove(pid)
        raise RuntimeError(f"worker process {pid} exited unexpectedly (status {status}); stopping")
    except KeyboardInterrupt:
        if accept_failure:
            raise RuntimeError(f"accepting connections failed: {accept_failure[0]!r}") from accept_failure[0]
    finally:
        # a second Ctrl+C or SIGTERM must not cut the clean-up short and leave workers behind
        for sig in previous_handlers:
            signal.signal(sig, signal.SIG_IGN)
        stopping.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # no new connections; wakes the accepting thread, which ends
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        _reap(children, timeout_s=STOP_TIMEOUT_S)
        listener.close()
        for handoff in handoffs:
            handoff.close()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def stop_on_signal(signum, frame):
    """A signal handler (SIGTERM): stop as Ctrl+C does; waitress's ``run()`` and :func:`serve_workers` end
    cleanly on it."""
    raise KeyboardInterrupt


def _reap(children: list[int], timeout_s: float) -> None:
    """Wait for the worker processes to exit; kill those still running after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    waiting, killed = set(children), False
    while waiting:
        for pid in list(waiting):
            try:
                done = os.waitpid(pid, os.WNOHANG)[0]
            except ChildProcessError:  # already reaped
                done = pid
            if done:
                waiting.discard(pid)
        if waiting and not killed and time.monotonic() > deadline:
            for pid in waiting:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed = True
        if waiting:
            time.sleep(0.01)


def pin_to_cpu(index: int) -> None:
    """Keep this process on the ``index``-th of the CPUs it may use now (counting round).

    Call it before waitress starts its threads, which inherit it. Does nothing where the OS cannot pin
    (macOS, Windows).
    """
    if not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def _hand_out(listener: socket.socket, handoffs: list[socket.socket], closed_counts, stopping) -> None:
    """Parent: accept connections until ``stopping`` is set, giving each to the worker with the fewest open.

    Raises whatever ends it otherwise (the caller stops the server).
    """
    handed = [0] * len(handoffs)
    turn = 0
    # each worker's own limit (it sheds waiting connections before reaching it, so this rarely holds)
    limit = min(CONNECTION_LIMIT, connection_limit())
    while not stopping.is_set():
        if min(handed[i] - closed_counts[i] for i in range(len(handoffs))) >= limit:
            # every worker is full: leave new connections in the kernel's backlog until one closes
            time.sleep(0.01)
            continue
        try:
            select.select([listener], [], [])
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            # the workers' waitress made the shared socket non-blocking: wait again
            continue
        except (OSError, ValueError) as exc:
            if stopping.is_set():  # the listener was shut down or closed
                return
            if getattr(exc, "errno", None) in _RETRY_ACCEPT:  # that client gave up, or no descriptor is free
                time.sleep(0.01 if exc.errno not in _OUT_OF_DESCRIPTORS else 0.1)
                continue
            raise
        with connection:  # the parent's copy is closed once the worker holds its own
            n = len(handoffs)
            best = min(range(n), key=lambda i: (handed[i] - closed_counts[i], (i - turn) % n))
            turn = (best + 1) % n
            try:
                # blocks if that worker has 10 connections not yet taken in (Linux's datagram queue)
                socket.send_fds(handoffs[best], [b"c"], [connection.fileno()])
            except OSError:
                if stopping.is_set():
                    return
                raise  # that worker is gone (the main thread sees it exit too)
            handed[best] += 1


#: errors of accept() that concern one connection or a passing shortage, after which accepting goes on
#: (Linux's accept(2) asks callers to retry on the network errors it passes through)
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_RETRY_ACCEPT = _OUT_OF_DESCRIPTORS | {getattr(errno, name) for name in (
    "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH", "EOPNOTSUPP",
    "ENETUNREACH", "ETIMEDOUT") if hasattr(errno, name)}


def _serve_handed_connections(make_server, listener, handoff, closed_counts, index: int, parent: int) -> None:
    """Worker: a waitress server fed with the connections the parent hands over."""
    from waitress import wasyncore

    socket_map: dict = {}
    # waitress needs a listening socket to build its server around; this one is never accepted on here
    server = make_server(sockets=[listener], socket_map=socket_map)
    server.accepting = False  # connections arrive through `handoff`

    class HandedConnections(wasyncore.dispatcher):
        """Adopts each received connection as a waitress channel; publishes how many have closed."""

        def __init__(self):
            super().__init__(handoff, map=socket_map)
            self.adopted = 0
            self.fixed = len(socket_map)  # the listener, waitress's trigger and this: not connections

        def readable(self) -> bool:
            # called on every turn of waitress's loop (at least once a second), so the count the parent
            # reads is at most one turn old, and a worker whose parent was killed leaves within a second
            # rather than keep the port open with nobody accepting
            if os.getppid() != parent:
                raise SystemExit
            closed_counts[index] = self.adopted - (len(socket_map) - self.fixed)
            return True

        def writable(self) -> bool:
            return False

        def handle_read(self) -> None:
            while True:
                try:
                    message, fds, _, _ = socket.recv_fds(self.socket, 1, 1)
                except (BlockingIOError, InterruptedError):
                    return
                if not message:
                    return
                # one message per connection the parent counted, even if its descriptor did not arrive (a
                # worker out of file descriptors gets the message without it, and the client a reset)
                self.adopted += 1
                for fd in fds:
                    self.adopt(socket.socket(fileno=fd))

        def adopt(self, connection: socket.socket) -> None:
            try:
                address = connection.getpeername()
                server.set_socket_options(connection)
                server.channel_class(server, connection, address, server.adj, map=socket_map)
            except OSError:  # the client left before it was adopted
                connection.close()
            except Exception:  # never let one connection take down the hand-over (waitress would close it)
                log.exception("could not adopt a connection")
                connection.close()

    HandedConnections()
    serve_until_stopped(server, socket_map)


def serve_until_stopped(server, socket_map: dict, drain_s: float = DRAIN_S) -> None:
    """Run a waitress server until KeyboardInterrupt or SystemExit, then send the answers it still holds.

    Waitress's ``run()`` lets the running requests finish, but only its loop sends, and that has stopped by
    then; answers are buffered (see ``make_server``), so they would be lost without this.
    """
    from waitress import wasyncore

    server.run()
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline:
        # only the channels with something to send: nothing new is read or accepted
        pending = {fd: channel for fd, channel in list(socket_map.items())
                   if getattr(channel, "total_outbufs_len", 0)}
        if not pending:
            return
        # poll() where there is one: select() refuses descriptors above 1,023
        (wasyncore.poll2 if hasattr(select, "poll") else wasyncore.poll)(0.05, pending)
