"""Waitress's server and channel with two changes: idle and slow connections cannot starve real clients,
and waitress's own error answers (malformed request, body over its limit, a crash) are JSON like the API's.

Waitress alone stops accepting at its connection limit (100) and closes an idle connection only after
``channel_timeout``, checked every ``cleanup_interval``; and a client that sends a header line every few
seconds is never idle, so it holds its connection for ever. Here each process takes many more
connections (:func:`connection_limit`), closes a connection whose request headers take longer than
:data:`HEADER_TIMEOUT_S` (a whole request, :data:`REQUEST_TIMEOUT_S`), closes idle ones after
:data:`IDLE_TIMEOUT_S`, and when it nears its limit sheds the connections that wait longest without a
request under way, so that a new client always finds a place. The single-process server and each forked
worker (:mod:`.workers`) are the same :class:`GuardedServer`. It builds on waitress's own classes and
channel attributes, which is why the ``web`` extra keeps waitress below its next major version; the tests
in ``test_web_connections.py`` fail if an upgrade changes them.
"""

from __future__ import annotations

import contextlib
import select
import time

from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask

from .api import TOO_LARGE, error_body

#: connections one server process holds at most (fewer if it may not open that many files)
CONNECTION_LIMIT = 1000
#: file descriptors kept for everything else a process opens (model, logs, the hand-over sockets)
RESERVED_FILES = 64
#: from this share of the limit on, connections without a request under way are closed, oldest first,
#: down to :data:`SHED_TO` of it (a margin, so shedding is not redone for every new connection)
SHED_AT, SHED_TO = 0.9, 0.8
#: a connection between requests is closed after this long without a byte in or out
IDLE_TIMEOUT_S = 15
#: a request's headers must arrive within this time of its first byte, and the whole request within
#: REQUEST_TIMEOUT_S (a 2 MB upload over a slow mobile link takes well under that)
HEADER_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0


def connection_limit() -> int:
    """:data:`CONNECTION_LIMIT`, or fewer if this process may not open that many files."""
    try:
        import resource
    except ImportError:  # Windows
        return CONNECTION_LIMIT
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return CONNECTION_LIMIT
    return max(8, min(CONNECTION_LIMIT, soft - RESERVED_FILES))


def raise_file_limit() -> None:
    """Let this process open enough files for :data:`CONNECTION_LIMIT` connections, if the OS allows it
    (many systems start processes at 1,024 with a far higher ceiling). Call before forking workers."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CONNECTION_LIMIT + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY
                                                        else min(wanted, hard), hard))


def adjustments() -> dict:
    """The waitress settings the guard relies on (for ``create_server``/``Adjustments``)."""
    return {"connection_limit": connection_limit(), "channel_timeout": IDLE_TIMEOUT_S,
            # deadlines are checked every second; fds above 1,023 need poll(), select() refuses them
            "cleanup_interval": 1, "asyncore_use_poll": hasattr(select, "poll")}


class JsonErrorTask(ErrorTask):
    """Waitress's own error answers as the API's JSON ``{"error": message, "status": code}``."""

    def execute(self):
        error = self.request.error
        if error.code == 413:
            message = TOO_LARGE
        elif error.code == 500:  # the app failed outside Flask's handlers; the traceback is in the log
            message = "internal server error"
        else:
            message = f"{error.reason.lower()}: {error.body}"[:300]
        body = error_body(message, error.code)
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class GuardedChannel(HTTPChannel):
    """A waitress connection that remembers when the request it is reading began (for the deadlines)."""

    error_task_class = JsonErrorTask
    request_started = 0.0  # time.time() of the first byte of the request being read

    def received(self, data):
        reading = self.request
        result = super().received(data)
        if self.request is not None and self.request is not reading:  # a new request has begun
            self.request_started = time.time()
        return result

    def waiting_since(self) -> float | None:
        """Since when this connection waits without a request under way (between requests, or still
        reading a request's headers); ``None`` while a request is being answered or its body read."""
        if self.requests or self.total_outbufs_len or self.will_close or self.close_when_flushed:
            return None
        if self.request is None:
            return self.last_activity
        return None if self.request.headers_finished else self.request_started

    def overdue(self, now: float) -> bool:
        """Whether this connection has waited past its deadline: idle, headers or whole request."""
        if self.requests or self.total_outbufs_len or self.will_close or self.close_when_flushed:
            return False
        if self.request is None:
            return now - self.last_activity > self.adj.channel_timeout
        limit = REQUEST_TIMEOUT_S if self.request.headers_finished else HEADER_TIMEOUT_S
        return now - self.request_started > limit


class GuardedServer(TcpWSGIServer):
    """Waitress's TCP server with :class:`GuardedChannel` connections, their deadlines and shedding."""

    channel_class = GuardedChannel

    def readable(self):
        # every turn of the loop, before waitress decides whether to accept: make room if nearly full
        if len(self.active_channels) >= SHED_AT * self.adj.connection_limit:
            self.shed(int(SHED_TO * self.adj.connection_limit))
        return super().readable()

    def maintenance(self, now):
        """Close the connections past a deadline (waitress calls this every ``cleanup_interval``)."""
        for channel in list(self.active_channels.values()):
            if isinstance(channel, GuardedChannel) and channel.overdue(now):
                channel.will_close = True  # closed by the loop on its next turn, as waitress does it

    def shed(self, keep: int) -> None:
        """Close the connections waiting longest without a request under way, until ``keep`` are left
        (or none of the rest is waiting)."""
        waiting, closing = [], 0
        for channel in self.active_channels.values():
            if channel.will_close:  # marked on an earlier turn, not closed yet
                closing += 1
            elif isinstance(channel, GuardedChannel) and (since := channel.waiting_since()) is not None:
                waiting.append((since, channel))
        waiting.sort(key=lambda item: item[0])
        for _, channel in waiting[:max(len(self.active_channels) - closing - keep, 0)]:
            channel.will_close = True
