"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package (``make test`` installs it), a new
cluster in a temporary folder, listening on a free loopback port, stopped and removed afterwards.

PostgreSQL refuses to run as root: as root the cluster is made and run as the ``postgres`` user the Debian
package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(user: str = "tuner"):
    """Yield the URL ``postgresql://USER@127.0.0.1:PORT/postgres`` of a fresh server; raise RuntimeError
    when PostgreSQL is not installed."""
    bins = _bin_dir()
    if bins is None:
        raise RuntimeError("PostgreSQL is not installed: `make system-deps` (part of `make test`) installs "
                           "Debian's postgresql")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    folder = Path(tempfile.mkdtemp(prefix="scratchpilot-pg-"))
    data = folder / "data"
    if as_root:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    log = folder / "server.log"
    try:
        subprocess.run(prefix + [str(bins / "initdb"), "-D", str(data), "-A", "trust", "-U", user, "--no-sync",
                                 "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=40"
        subprocess.run(prefix + [str(bins / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
                                 "-t", "60", "start"], check=True, capture_output=True, timeout=90)
        yield f"postgresql://{user}@127.0.0.1:{port}/postgres"
    finally:
        if data.exists():
            subprocess.run(prefix + [str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
