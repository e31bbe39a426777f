"""The local workspace: flags, environment variables and the embedded defaults resolved into
the resources a command uses.

Search order, each the first that applies (the variables are read through
:class:`totes.utils.settings.Settings`):

* **Project directory**: the nearest directory, from the current one up, that holds
  ``config/pipeline.yaml``; else the checkout totes is installed from (when it has one).
* **Configuration**: ``--config FILE``; else ``$TOTES_CONFIG``; else
  ``<project>/config/pipeline.yaml``.
* **State directory** (embedded server, lake, processed area): ``$TOTES_HOME``; else
  ``<project>/.totes``; else ``./.totes``. So ``totes run`` from any folder of the project
  uses the same embedded server.
* **Databases**: ``--source-url``/``--warehouse-url``; else ``$TOTES_SOURCE_URL``/
  ``$TOTES_WAREHOUSE_URL``; else ``$TOTES_SOURCE_SECRET``/``$TOTES_WAREHOUSE_SECRET``
  (Secrets Manager); else the embedded server's ``totesys``/``warehouse`` databases, started
  on first use.
* **Lake / processed area**: ``--lake``/``--processed`` (or ``$TOTES_LAKE``/
  ``$TOTES_PROCESSED``); else ``<state>/lake`` and ``<state>/processed``.
* **Ledger**: ``$TOTES_LEDGER`` (``sqlite:///path`` or ``dynamodb://table``); else
  ``<state>/ledger.sqlite3``.

The configuration is read and validated before anything starts: a bad or missing file fails
without starting a server.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Literal, Optional, overload

from totes.contracts.config import DEFAULT_CONFIG_PATH, PipelineConfig
from totes.contracts.errors import ConfigError
from totes.local.embedded import (EmbeddedPostgres, SOURCE_DATABASE, WAREHOUSE_DATABASE,
                                  recreate_databases)
from totes.local.runner import Resources
from totes.utils import resources, settings
from totes.utils.config_file import load_config
from totes.utils.databases import (SourceDatabase, as_warehouse, database_from_secret,
                                   database_from_url)
from totes.utils.postgres import Database
from totes.utils.lake import Lake
from totes.utils.ledger import Ledger, SqliteLedger
from totes.utils.settings import Settings

#: The checkout this package is installed from (editable install); may hold no config.
_CHECKOUT = Path(__file__).resolve().parents[2]
REPLAY_DATABASES = ("replay_totesys", "replay_warehouse")


def find_project(start: Optional[Path] = None) -> Optional[Path]:
    """The nearest directory from ``start`` (the current one) up that holds
    ``config/pipeline.yaml``; else the checkout totes is installed from, if it holds one."""
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if (folder / DEFAULT_CONFIG_PATH).is_file():
            return folder
    return _CHECKOUT if (_CHECKOUT / DEFAULT_CONFIG_PATH).is_file() else None


def home_dir(current: Optional[Settings] = None, project: Optional[Path] = None) -> Path:
    """``$TOTES_HOME``, else ``<project>/.totes``, else ``./.totes`` (absolute)."""
    current = current or settings.current()
    if current.home:
        return Path(current.home).absolute()
    project = project or find_project()
    return (project / ".totes") if project else Path(".totes").absolute()


def config_path(flag: Optional[str], current: Optional[Settings] = None,
                project: Optional[Path] = None) -> Path:
    """The configuration file by the search order above.

    Raises:
        ConfigError: none is given and no project directory was found.
    """
    if flag:
        return Path(flag)
    current = current or settings.current()
    if current.config:
        return Path(current.config)
    project = project or find_project()
    if project is None:
        raise ConfigError("no configuration: give --config FILE or set TOTES_CONFIG, or run "
                          f"inside a totes project (a directory with {DEFAULT_CONFIG_PATH})")
    return project / DEFAULT_CONFIG_PATH


class Workspace:
    """What one command works on, resolved lazily: the embedded server starts only when a
    database without a URL is first needed, and only after the configuration (when the
    command needs one) has been read and validated.

    A flag not given falls back to its variable (``TOTES_SOURCE_URL``, ``TOTES_LAKE``, ...,
    from ``current``, the settings); ``from_environment=False`` (``totes replay``, which
    works on its own databases and folders) leaves the variables of the databases and
    storage out.

    ``on_server_start`` is called before the embedded server is started (for a progress
    line); it must not fail.
    """

    def __init__(self, source_url: Optional[str] = None, warehouse_url: Optional[str] = None,
                 lake: Optional[str] = None, processed: Optional[str] = None,
                 config: Optional[str] = None, current: Optional[Settings] = None,
                 on_server_start: Callable[[], object] = lambda: None,
                 from_environment: bool = True):
        self.settings = current or settings.current()
        if from_environment:
            source_url = source_url or self.settings.source_url
            warehouse_url = warehouse_url or self.settings.warehouse_url
            lake, processed = lake or self.settings.lake, processed or self.settings.processed
        self.project = find_project()
        self.home = home_dir(self.settings, self.project)
        self.embedded = EmbeddedPostgres(self.home)
        self._from_environment = from_environment
        self._urls = {"source": source_url, "warehouse": warehouse_url}
        self._embedded_urls: Optional[dict] = None
        self._storage_flags = {"lake": lake, "processed": processed}
        self.lake_uri = lake or str(self.home / "lake")
        self.processed_uri = processed or str(self.home / "processed")
        self._config_flag = config
        self._config: Optional[PipelineConfig] = None
        self._on_server_start = on_server_start

    # ---- configuration --------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return config_path(self._config_flag, self.settings, self.project)

    def config(self) -> PipelineConfig:
        """The validated configuration (read once).

        Raises:
            ConfigError: no configuration was found, or it is unreadable or invalid.
        """
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    # ---- databases and storage ------------------------------------------------------------
    def is_embedded(self, role: str) -> bool:
        """Whether the ``role`` database ("source", "warehouse") is the embedded one."""
        return not self._urls[role] and not self.secret(role)

    def secret(self, role: str) -> Optional[str]:
        """The Secrets Manager secret naming the ``role`` database (``TOTES_<ROLE>_SECRET``),
        when no URL is given."""
        if self._urls[role] or not self._from_environment:
            return None
        return getattr(self.settings, f"{role}_secret")

    def url(self, role: str) -> str:
        """The URL of the ``role`` database, starting the embedded server if it is needed."""
        given = self._urls[role]
        if given:
            return given
        if self._embedded_urls is None:
            if not self.embedded.is_running():
                self._on_server_start()
            self._embedded_urls = self.embedded.start()
        return self._embedded_urls[SOURCE_DATABASE if role == "source" else WAREHOUSE_DATABASE]

    @overload
    def database(self, role: Literal["warehouse"]) -> Database: ...

    @overload
    def database(self, role: Literal["source"]) -> SourceDatabase: ...

    def database(self, role: str) -> SourceDatabase:
        """The ``role`` database: its URL (flag or ``TOTES_<ROLE>_URL``), its secret
        (``TOTES_<ROLE>_SECRET``), or the embedded one. A MySQL source is a
        :class:`totes.utils.mysql.MySQLDatabase`."""
        secret = self.secret(role)
        found = database_from_secret(role, secret) if secret else \
            database_from_url(role, self.url(role))
        return as_warehouse(found) if role == "warehouse" else found

    def lake(self) -> Lake:
        return Lake(self.lake_uri)

    def processed(self) -> Lake:
        return Lake(self.processed_uri)

    def ledger(self) -> Ledger:
        """The run ledger (see the search order above)."""
        return resources.ledger(self.settings) or SqliteLedger(str(self.home / "ledger.sqlite3"))

    def resources(self) -> Resources:
        """Everything a run needs. The configuration is checked first, then databases."""
        self.config()
        return Resources(self.database("source"), self.database("warehouse"), self.lake(),
                         self.processed(), str(self.config_path), self.ledger())

    # ---- the embedded source ---------------------------------------------------------------
    def source_is_empty(self) -> bool:
        """Whether the source database has no table yet (the embedded one on first use)."""
        source = self.database("source")
        with source.session("totes-check", f"looking for tables in the {source.describe()}") \
                as session:
            (tables,), = session.conn.run(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        return tables == 0

    def seed_embedded_if_empty(self) -> Optional[dict]:
        """On first use of the embedded source, load the ToteSys snapshot into it; returns
        the seeder's counts, or None when the source is given by URL or already holds tables.
        A source given by URL is never seeded."""
        from totes.local.seed import seed

        if not self.is_embedded("source") or not self.source_is_empty():
            return None
        return seed(self.database("source"))

    # ---- replay -----------------------------------------------------------------------------
    def replay_resources(self) -> Resources:
        """The resources of ``totes replay``: its own embedded databases (recreated) and
        directories under ``<state>/replay`` (emptied), except where a flag names others."""
        self.config()
        wanted = [name for name, role in zip(REPLAY_DATABASES, ("source", "warehouse"))
                  if self.is_embedded(role)]
        if wanted and not self.embedded.is_running():
            self._on_server_start()
        urls = recreate_databases(self.embedded, wanted) if wanted else {}
        folders = {}
        for name, given in self._storage_flags.items():
            if given is None:  # no flag: the replay's own folder, emptied
                folder = self.home / "replay" / name
                shutil.rmtree(folder, ignore_errors=True)
                given = str(folder)
            folders[name] = given
        ledger = self.home / "replay" / "ledger.sqlite3"
        for leftover in (ledger, ledger.with_suffix(".sqlite3-wal"),
                         ledger.with_suffix(".sqlite3-shm")):
            leftover.unlink(missing_ok=True)
        return Resources(
            database_from_url("source", self._urls["source"] or urls["replay_totesys"]),
            as_warehouse(database_from_url("warehouse",
                                           self._urls["warehouse"] or urls["replay_warehouse"])),
            Lake(folders["lake"]), Lake(folders["processed"]), str(self.config_path),
            SqliteLedger(str(ledger)))
