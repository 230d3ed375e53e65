"""Several waitress processes behind one port, each connection handed to the least busy one.

Python runs one thread at a time per process, so one waitress process uses about one core; forked
workers use the others. The usual way to share a port (every worker accepting on one listening socket)
leaves the split to whichever process wakes first: 32 keep-alive clients were measured splitting 23/9
and 19/13, and then the clients of the busier worker wait about twice as long. Here the parent process
accepts every connection and passes its file descriptor (``SCM_RIGHTS`` over a Unix socket pair) to the
worker with the fewest open connections, ties in turn.

Bookkeeping needs no locks: the parent counts what it handed to each worker, each worker
publishes how many of those have closed (an 8-byte slot in shared memory written only by it), and
open = handed − closed (an upper bound, at most one turn of the worker's loop old).
"""

from __future__ import annotations

import _thread
import contextlib
import mmap
import os
import select
import signal
import socket
import threading
import time
import traceback

#: open connections per worker beyond which the parent stops accepting (waitress's own default limit)
CONNECTION_LIMIT = 100


def serve_workers(make_server, workers: int, host: str, port: int, on_ready=None, pin: bool = True) -> None:
    """Serve with ``workers`` forked processes until interrupted (Ctrl+C or SIGTERM).

    Parameters
    ----------
    make_server : called in each worker with ``sockets=[...]`` and ``socket_map={...}``; returns a waitress
        server (see :func:`scratchpilot.web.app.make_server`). The app is loaded before forking.
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
    cpus = usable_cpus() if pin else []
    children: list[int] = []
    handoffs: list[socket.socket] = []
    accept_failure: list[BaseException] = []

    def terminate(signum, frame):
        raise KeyboardInterrupt

    try:
        for index in range(workers):
            # datagrams: one connection per message, so descriptors never merge across messages
            parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            pid = os.fork()
            if pid == 0:  # a worker: serve until the parent says stop, never return into the caller
                status = 1
                try:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl+C for the group
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    parent_end.close()
                    for other in handoffs:
                        other.close()
                    if cpus:  # before waitress starts its threads, which inherit it
                        os.sched_setaffinity(0, {cpus[index % len(cpus)]})
                    _serve_handed_connections(make_server, listener, worker_end, closed_counts, index)
                    status = 0
                except Exception:  # say why, then leave: a worker must never return into the caller
                    traceback.print_exc()
                finally:
                    os._exit(status)
            worker_end.close()
            children.append(pid)
            handoffs.append(parent_end)
        signal.signal(signal.SIGTERM, terminate)

        def accept() -> None:
            try:
                _hand_out(listener, handoffs, closed_counts)
            except Exception as exc:  # a bug: stop the server rather than leave it up and deaf
                accept_failure.append(exc)
                _thread.interrupt_main()

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
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread, which then ends
        listener.close()
        for handoff in handoffs:
            handoff.close()


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, in order (empty where the OS cannot pin: macOS, Windows)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []


def _hand_out(listener: socket.socket, handoffs: list[socket.socket], closed_counts) -> None:
    """Parent: accept connections for ever, giving each to the worker with the fewest open ones."""
    handed = [0] * len(handoffs)
    turn = 0
    while True:
        if min(handed[i] - closed_counts[i] for i in range(len(handoffs))) >= CONNECTION_LIMIT:
            # every worker is full: leave new connections in the kernel's backlog until one closes
            time.sleep(0.01)
            continue
        try:
            select.select([listener], [], [])
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            # the workers' waitress made the shared socket non-blocking: wait again
            continue
        except (OSError, ValueError):  # the listener was shut down or closed: the server is stopping
            return
        with connection:  # the parent's copy is closed once the worker holds its own
            n = len(handoffs)
            best = min(range(n), key=lambda i: (handed[i] - closed_counts[i], (i - turn) % n))
            turn = (best + 1) % n
            try:
                socket.send_fds(handoffs[best], [b"c"], [connection.fileno()])
            except OSError:  # that worker is gone; the main thread is stopping the server
                return
            handed[best] += 1


def _serve_handed_connections(make_server, listener, handoff, closed_counts, index: int) -> None:
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
            # called on every turn of waitress's loop, so the count the parent reads is at most one turn old
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
                    connection = socket.socket(fileno=fd)
                    try:
                        address = connection.getpeername()
                        server.set_socket_options(connection)
                    except OSError:  # the client left before it was adopted
                        connection.close()
                        continue
                    server.channel_class(server, connection, address, server.adj, map=socket_map)

    HandedConnections()
    server.run()
