"""An embedded PostgreSQL server under the local state directory, holding a source database
(``totesys``) and a warehouse database (``warehouse``).

It is the default when no URL is given: the ``pgserver`` package ships PostgreSQL 16 in a
wheel, so a fresh machine needs nothing else. The server listens on a Unix socket only
(``<state>/postgres``), keeps running after the command that started it, and is reused by
the next command; ``totes embedded stop`` stops it. When started as root it runs as the
system user ``pgserver``, since PostgreSQL refuses to run as root.

The server runs with ``wal_level = logical``, so that a newcomer can try change data capture
(``extract_type: cdc``) locally: a server that runs without it (created by an earlier
release) is set so and restarted once, the first time it is started.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from totes.contracts.errors import DatabaseUnavailable
from totes.contracts.identifiers import quote_ident
from totes.utils.postgres import Database

SOURCE_DATABASE = "totesys"
WAREHOUSE_DATABASE = "warehouse"


@dataclass(frozen=True)
class EmbeddedPostgres:
    """The embedded server of one state directory.

    ``durable=False`` is for a server whose data is thrown away with it (the tests' servers,
    ``make deploy-local``): it runs without fsync or full-page writes, two of PostgreSQL's
    "Non-Durable Settings" (runtime-config-wal), which a crash of the machine may corrupt but
    which make commits several times cheaper. Commits still wait for their WAL to be flushed
    (to the operating system), so a change is in the log when its commit returns.
    """

    state_dir: Path
    durable: bool = True

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "postgres"

    def _server(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pgserver
            try:
                return pgserver.get_server(self.data_dir, cleanup_mode=None)
            except Exception as exc:  # pgserver raises plain exceptions with the server log
                raise DatabaseUnavailable(
                    f"cannot start the embedded PostgreSQL in {self.data_dir}: {exc}") from exc

    def start(self, databases=(SOURCE_DATABASE, WAREHOUSE_DATABASE)) -> dict[str, str]:
        """Start the server if it is not running, create ``databases`` when absent, and return
        their URLs: ``{"totesys": "postgresql://postgres:@/totesys?host=/..."}``.

        Raises:
            DatabaseUnavailable: the server could not be started.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        server = self._server()
        admin = Database.from_url("embedded", server.get_uri("postgres"))
        self._ensure_logical_decoding(admin)
        if not self.durable:
            self._without_durability(admin)
        with admin.session("totes-admin", "creating the embedded databases") as session:
            existing = {name for name, in session.conn.run("SELECT datname FROM pg_database")}
            for name in databases:
                if name not in existing:
                    session.conn.run(f"CREATE DATABASE {quote_ident(name)}")
        return {name: server.get_uri(name) for name in databases}

    def _ensure_logical_decoding(self, admin: Database) -> None:
        """``wal_level = logical`` (set with ``ALTER SYSTEM`` and a restart when it is not).

        Raises:
            DatabaseUnavailable: the server could not be restarted.
        """
        with admin.session("totes-admin", "reading the embedded server's wal_level") as session:
            (level,), = session.conn.run("SHOW wal_level")
            if level == "logical":
                return
            session.conn.run("ALTER SYSTEM SET wal_level = 'logical'")
        try:
            self._pg_ctl(["-w", "-m", "fast", "-l", str(self.data_dir / "log"), "restart"])
        except Exception as exc:  # pgserver's pg_ctl raises CalledProcessError with the log
            raise DatabaseUnavailable(f"cannot restart the embedded PostgreSQL in "
                                      f"{self.data_dir} with wal_level=logical: {exc}") from exc

    @staticmethod
    def _without_durability(admin: Database) -> None:
        """fsync and full_page_writes off (settings a reload applies)."""
        with admin.session("totes-admin", "setting the embedded server non-durable") as session:
            (fsync,), = session.conn.run("SHOW fsync")
            if fsync == "off":
                return
            for setting in ("fsync", "full_page_writes"):
                session.conn.run(f"ALTER SYSTEM SET {setting} = off")
            session.conn.run("SELECT pg_reload_conf()")

    def _pg_ctl(self, arguments: list[str]) -> None:
        """Run pgserver's ``pg_ctl`` on this server (as the system user ``pgserver`` when this
        process is root)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
        user = "pgserver" if os.geteuid() == 0 else None
        # pg_ctl is pgserver's own wrapper, which its stubs do not declare.
        pg_ctl = pgserver.pg_ctl  # type: ignore[attr-defined]
        pg_ctl(arguments, pgdata=self.data_dir, user=user)

    def is_running(self) -> bool:
        """Whether a server is running on this state directory."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            os.kill(int(pid_file.read_text().split()[0]), 0)
            return True
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True

    def stop(self) -> bool:
        """Stop the server; returns False when it was not running."""
        if not self.is_running():
            return False
        self._pg_ctl(["-w", "stop"])
        return True


def recreate_databases(server: EmbeddedPostgres, names: list[str]) -> dict[str, str]:
    """Drop and create ``names`` on the embedded ``server`` (started if needed); returns their
    URLs. Used by replay, which starts from empty databases each time."""
    urls = server.start(("postgres",))
    admin = Database.from_url("embedded", urls["postgres"])
    with admin.session("totes-admin", "recreating the replay databases") as session:
        for name in names:
            session.conn.run(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    return server.start(tuple(names))
