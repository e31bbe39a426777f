"""A real MariaDB server for the tests of MySQL sources, started from Debian's ``mariadb-server``
binaries (``scripts/install_test_packages.sh`` installs them) in a temporary directory, on a
Unix socket only, as the unprivileged user ``pgserver`` when the tests run as root (mysqld
should not run as root), with a binlog that change data capture can read (``binlog_format =
ROW``, ``binlog_row_image = FULL``, ``binlog_row_metadata = FULL``)."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess  # nosec B404: starts the test's own database server
import tempfile
import time
from pathlib import Path
from typing import Optional

from totes.utils.mysql import MySQLDatabase

SERVER_USER = "pgserver"


def missing_binaries() -> Optional[str]:
    """Why no MariaDB server can start here (None when one can)."""
    for binary in ("mariadb-install-db", "mariadbd"):
        if not shutil.which(binary) and not Path(f"/usr/sbin/{binary}").exists():
            return f"{binary} is not installed (scripts/install_test_packages.sh installs it)"
    return None


class MariaDB:
    """One MariaDB server in its own directory; :meth:`database` creates databases in it."""

    def __init__(self):
        self.home = Path(tempfile.mkdtemp(prefix="totes-mariadb-"))
        self.socket = self.home / "mysqld.sock"
        self.process: Optional[subprocess.Popen] = None

    def _as_server_user(self, command: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return command
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER],  # nosec
                           check=True)
        shutil.chown(self.home, SERVER_USER)
        return ["runuser", "-u", SERVER_USER, "--", *command]

    def start(self) -> "MariaDB":
        data = self.home / "data"
        subprocess.run(self._as_server_user([  # nosec B603: fixed arguments
            "mariadb-install-db", "--no-defaults", f"--datadir={data}",
            "--auth-root-authentication-method=normal", "--skip-test-db",
            "--skip-name-resolve"]), check=True, capture_output=True)
        daemon = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.process = subprocess.Popen(self._as_server_user([  # nosec B603
            daemon, "--no-defaults", f"--datadir={data}", f"--socket={self.socket}",
            "--skip-networking", f"--pid-file={self.home / 'mysqld.pid'}",
            f"--log-error={self.home / 'error.log'}", "--innodb-buffer-pool-size=128M",
            "--character-set-server=utf8mb4",
            # Its own temporary files' directory: servers of two test runs never share one.
            f"--tmpdir={self.home}",
            # A binlog that change data capture can read (row events, whole rows, column
            # names), kept small: the tests' servers are thrown away.
            f"--log-bin={data / 'binlog'}", "--server-id=1", "--binlog-format=ROW",
            "--binlog-row-image=FULL", "--binlog-row-metadata=FULL",
            "--max-binlog-size=16M", "--sync-binlog=0",
            # Not durable (no flush at commit, no doublewrite buffer): a test server's data is
            # thrown away with it, and a crash is tested by killing clients, not the server.
            "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.admin().connect().close()
                return self
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.home / "error.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"MariaDB did not start: {log}") from None
                time.sleep(0.2)

    def url(self, database: str) -> str:
        return f"mysql://root@localhost/{database}?unix_socket={self.socket}"

    def admin(self) -> MySQLDatabase:
        return MySQLDatabase.from_url("source", self.url("mysql"))

    def database(self, name: str) -> MySQLDatabase:
        """A new empty database ``name``."""
        conn = self.admin().connect()
        try:
            conn.run(f"CREATE DATABASE \"{name}\" CHARACTER SET utf8mb4")
        finally:
            conn.close()
        return MySQLDatabase.from_url("source", self.url(name))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.home, ignore_errors=True)
