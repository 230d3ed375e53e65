"""Where a study lives: an embedded journal file in the output folder, or any database URL Optuna accepts.

The embedded default is Optuna's journal file (:class:`optuna.storages.journal.JournalFileBackend`), not
SQLite: every operation is one appended line written under a file lock, so several processes on one
machine can share it, where SQLite serialises writers on one database lock and Optuna's documentation
warns of "database is locked" errors with parallel workers. Optuna's journal storage has no heartbeat of its
own; :class:`HeartbeatJournalStorage` adds one through Optuna's own heartbeat interface, so a trial whose
worker was killed is failed and retried exactly as on a database (``RDBStorage``'s heartbeat).
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

#: the journal file inside the output folder
JOURNAL_NAME = "study.journal"
#: seconds between a running trial's heartbeats, and how long a silent trial counts as alive
HEARTBEAT_S = 10
GRACE_FACTOR = 3
#: how many times a trial whose worker died is run again
MAX_RETRY = 2
#: URL schemes (SQLAlchemy dialects) Optuna's RDBStorage is known to work with
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql")


class StorageError(ValueError):
    """A storage that cannot be named, reached or used; the message says which and why."""


def describe(url: str | None, out_dir) -> str:
    """The storage as shown to people: the journal's path, or the URL without its password."""
    if url is None:
        return str(Path(out_dir) / JOURNAL_NAME)
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- only for display; a bad URL is reported by open_storage
        return url


def check_url(url: str) -> None:
    """Refuse a storage URL Optuna cannot use, before anything is written: an unknown scheme, a malformed
    URL, a database driver that is not installed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"--storage {url!r}: not a database URL (use sqlite:///PATH or "
                           f"postgresql://USER@HOST:PORT/DB; leave it out for the journal file in --out)") from None
    scheme = parsed.get_backend_name()
    if scheme not in DATABASE_SCHEMES:
        raise StorageError(f"--storage {describe(url, '.')}: unknown storage {scheme!r}; Optuna stores studies in "
                           f"{', '.join(DATABASE_SCHEMES)} databases (or, without --storage, a journal file)")
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise StorageError(f"--storage {describe(url, '.')}: SQLAlchemy has no driver {parsed.drivername!r}") from None
    except ImportError as exc:
        hint = " (pip install 'scratchpilot[tune]' brings psycopg for PostgreSQL)" if scheme == "postgresql" else ""
        raise StorageError(f"--storage {describe(url, '.')}: its database driver is not installed: "
                           f"{exc}{hint}") from None


def open_storage(url: str | None, out_dir, *, heartbeat_s: float = HEARTBEAT_S):
    """The Optuna storage for ``url`` (None: the journal file in ``out_dir``), with a heartbeat every
    ``heartbeat_s`` seconds and the retry of trials whose worker died."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # Optuna's documented retry
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    interval = max(1, int(round(heartbeat_s)))
    grace = GRACE_FACTOR * interval
    if url is None:
        from optuna.storages.journal import JournalFileBackend

        path = Path(out_dir) / JOURNAL_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(JournalFileBackend(str(path)), interval=interval, grace=grace,
                                       on_stale=retry)
    check_url(url)
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=interval, grace_period=grace,
                                                  heartbeat_stale_trial_callback=retry,
                                                  engine_kwargs={"pool_pre_ping": True})
        except (IntegrityError, ProgrammingError):
            # two workers creating Optuna's tables at once: one wins, the other finds them made next time
            if attempt == 3:
                raise
            time.sleep(0.3 + 0.4 * attempt + random.random() * 0.3)
        except Exception as exc:  # noqa: BLE001 -- SQLAlchemy's connection errors have many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StorageError(f"--storage {describe(url, out_dir)}: cannot open it: {first}") from None
    raise AssertionError("unreachable")


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with Optuna's heartbeat interface: a running trial writes the time into its
    system attributes every ``interval`` seconds; one silent for ``grace`` seconds is stale, and Optuna's
    ``fail_stale_trials`` (run before every trial) fails it and calls ``on_stale``."""

    def __init__(self, backend, *, interval: int, grace: int, on_stale) -> None:
        super().__init__(backend)
        self._interval, self._grace, self._on_stale = interval, grace, on_stale

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, "heartbeat", time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get("heartbeat")
            if beat is None and trial.datetime_start is not None:
                beat = trial.datetime_start.timestamp()
            if beat is not None and now - float(beat) > self._grace:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self):
        return self._on_stale
