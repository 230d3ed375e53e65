"""Running the web app: a waitress server for it, alone or as several forked workers behind one port."""

from __future__ import annotations

import functools
import signal

from .api import MAX_BODY_BYTES


def make_server(app, host: str = "127.0.0.1", port: int = 8000, threads: int = 8, sockets=None, socket_map=None):
    """A waitress server for ``app`` bound to ``host:port`` (port 0 picks a free one: ``server.effective_port``),
    or serving already bound ``sockets``; ``socket_map`` is the dict waitress keeps its connections in.

    Its connections are :class:`.connections.GuardedChannel`: deadlines for idle and slow clients, shedding
    near the connection limit, and waitress's own errors in JSON. Call ``server.run()`` to serve (blocks)
    and ``server.close()`` to stop.
    """
    from waitress.adjustments import Adjustments
    from waitress.server import MultiSocketServer
    from waitress.task import ThreadedTaskDispatcher

    from .connections import GuardedServer, adjustments

    where = {"sockets": sockets} if sockets else {"host": host, "port": port}
    # Waitress buffers each body before the app runs; let it take a little more than the app's limit so
    # Flask answers oversize requests with its JSON 413, while waitress still caps memory per request.
    adj = Adjustments(threads=threads, ident="scratchpilot", max_request_body_size=4 * MAX_BODY_BYTES,
                      clear_untrusted_proxy_headers=True, **adjustments(), **where)
    socket_map = {} if socket_map is None else socket_map
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(threads)
    # what waitress's create_server does, with our server class (it has no parameter for one)
    if sockets:
        servers = [GuardedServer(app, socket_map, True, sock, dispatcher=dispatcher, adj=adj, bind_socket=False,
                                 sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))
                   for sock in sockets]
    else:
        servers = [GuardedServer(app, socket_map, dispatcher=dispatcher, adj=adj, sockinfo=info)
                   for info in adj.listen]
    # Buffer small answers so waitress's I/O thread sends each in one write: with its default (1 byte) the
    # request thread sends the head and the body as two, and the client waits on the second.
    # Set after creation because passing send_bytes warns that it is deprecated; should a later waitress
    # ignore it, only this speed-up goes.
    adj.send_bytes = 18000
    if len(servers) == 1:
        return servers[0]
    return MultiSocketServer(socket_map, adj, [(s.effective_host, s.effective_port) for s in servers], dispatcher,
                             servers[0].log_info)


def run_server(app, host: str = "127.0.0.1", port: int = 8000, threads: int = 8, workers: int = 1,
               on_ready=None, pin: bool = True) -> None:
    """Serve ``app`` until interrupted (Ctrl+C or SIGTERM).

    Parameters
    ----------
    workers : server processes. Python runs one thread at a time per process, so a single waitress
        process uses about one core however many threads it has; forked workers (Linux/macOS) use the
        others (see :mod:`scratchpilot.web.workers`). The model is loaded once, before forking.
    on_ready : called with the port actually listened on (useful with ``port=0``) once connections
        are accepted.
    pin : keep each server process on one CPU (Linux), each worker on its own. A process's threads
        share one GIL, and handing it between threads on different cores costs far more than on one.
    """
    from .connections import raise_file_limit
    from .workers import pin_to_cpu, serve_until_stopped, serve_workers, stop_on_signal

    raise_file_limit()  # before forking: the workers inherit it
    if workers > 1:
        serve_workers(functools.partial(make_server, app, threads=threads), workers, host, port, on_ready, pin)
        return
    if pin:
        pin_to_cpu(0)
    socket_map: dict = {}
    server = make_server(app, host=host, port=port, threads=threads, socket_map=socket_map)
    # a service manager's stop, like Ctrl+C: running requests finish, their answers go out, exit status 0
    previous = signal.signal(signal.SIGTERM, stop_on_signal)
    if on_ready:
        on_ready(server.effective_port)
    try:
        serve_until_stopped(server, socket_map)
    finally:
        server.close()
        signal.signal(signal.SIGTERM, previous)
