"""Shared fixtures: one real PostgreSQL server for the session (the embedded server the product
itself uses), a seeded ToteSys template, and fresh databases per test."""
from __future__ import annotations

import threading
import urllib.request
import uuid

import boto3
import pytest
from moto.server import ThreadedMotoServer

from totes.contracts.identifiers import quote_ident
from totes.local.embedded import EmbeddedPostgres
from totes.local.runner import Resources
from totes.local.seed import seed
from totes.utils.lake import Lake
from totes.utils.postgres import Database

from support import CONFIG, TEMPLATE


@pytest.fixture(autouse=True)
def _piped_width(monkeypatch):
    """Output as a pipe gets it without COLUMNS (200 columns), whatever the test runner
    exports (pytest-xdist's workers see COLUMNS=80); a test that wants 80 sets it."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The PostgreSQL server of the test session; returns its admin URL."""
    # Not durable (no fsync): the server is thrown away with the session, and a crash is tested
    # by killing clients, never the server.
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), durable=False)
    url = embedded.start(("postgres",))["postgres"]
    admin = Database.from_url("admin", url)
    seeded = _create(admin, TEMPLATE)
    seed(seeded)
    yield admin
    embedded.stop()


def _create(admin: Database, name: str, template: str | None = None) -> Database:
    conn = admin.connect()
    try:
        conn.run(f"CREATE DATABASE {quote_ident(name)}"
                 + (f" TEMPLATE {quote_ident(template)}" if template else ""))
    finally:
        conn.close()
    params = dict(admin.params, database=name)
    return Database("source" if name.startswith(("src", TEMPLATE)) else "warehouse", params)


@pytest.fixture
def new_database(server):
    """A factory of empty databases: ``new_database("src")``."""
    def make(prefix: str, template: str | None = None) -> Database:
        return _create(server, f"{prefix}_{uuid.uuid4().hex[:12]}", template)
    return make


@pytest.fixture
def seeded_source(new_database) -> Database:
    """A source database holding the whole real snapshot."""
    return new_database("src", TEMPLATE)


@pytest.fixture
def empty_source(new_database) -> Database:
    return new_database("src")


@pytest.fixture
def warehouse(new_database) -> Database:
    return new_database("wh")


@pytest.fixture
def resources(tmp_path, seeded_source, warehouse) -> Resources:
    """A run's resources: the seeded source, an empty warehouse, local lake and processed."""
    return Resources(seeded_source, warehouse, Lake(str(tmp_path / "lake")),
                     Lake(str(tmp_path / "processed")), CONFIG)


class OneRequestAtATime:
    """moto's S3 on loopback behind a server that answers one request at a time. S3 makes a
    conditional create (``If-None-Match: *``) atomic; moto checks for the key and then writes
    it, so with requests on threads two creates of one key can both succeed (seen in CI).
    One request at a time, the emulator keeps S3's guarantee, and a test of two concurrent
    publishes tests the lake, not moto's threads. Same methods as ``ThreadedMotoServer``."""

    def __init__(self):
        from moto.server import (DomainDispatcherApplication, MotoRequestHandler,
                                 create_backend_app)
        from werkzeug.serving import make_server

        self._server = make_server("127.0.0.1", 0, DomainDispatcherApplication(
            create_backend_app), threaded=False, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def get_host_and_port(self) -> tuple[str, int]:
        return "127.0.0.1", self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def s3_server(monkeypatch, request):
    """moto's S3 server on loopback, the AWS variables pointing at it; yields the server.
    A test marked ``one_s3_request_at_a_time`` gets :class:`OneRequestAtATime`."""
    if request.node.get_closest_marker("one_s3_request_at_a_time"):
        server = OneRequestAtATime()
    else:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    # moto's backends live in this process and outlive a server: start from an empty S3.
    urllib.request.urlopen(urllib.request.Request(  # nosec B310 (loopback, fixed URL)
        f"http://{host}:{port}/moto-api/reset", method="POST")).close()
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-2",
                        "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


@pytest.fixture
def s3_lake(s3_server):
    """A bucket ``lake`` in moto's S3 server; returns the URI ``s3://lake/ingest``."""
    boto3.client("s3").create_bucket(Bucket="lake",
                                     CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    return "s3://lake/ingest"


# ---- MySQL sources: a real MariaDB server --------------------------------------------------
@pytest.fixture(scope="session")
def mariadb():
    """The MariaDB server of the test session (skipped, with the reason, where the binaries
    are missing)."""
    from mariadb import MariaDB, missing_binaries

    reason = missing_binaries()
    if reason:
        pytest.skip(f"MySQL source tests need a MariaDB server: {reason}")
    server = MariaDB().start()
    yield server
    server.stop()


@pytest.fixture
def mysql_source(mariadb):
    """A new MariaDB database holding the whole real snapshot."""
    database = mariadb.database(f"src_{uuid.uuid4().hex[:12]}")
    seed(database)
    return database


@pytest.fixture
def empty_mysql_source(mariadb):
    return mariadb.database(f"src_{uuid.uuid4().hex[:12]}")


# ---- what make test-fast leaves out -------------------------------------------------------
#: A marker per outside part a test needs beyond the embedded PostgreSQL, given by the
#: fixture that provides the part (or, for the Spark tests, their module).
_PART_OF_FIXTURE = {"mariadb": "mariadb", "s3_server": "emulator"}


@pytest.fixture(scope="session")
def spark():
    """One local Spark for the Spark engine's tests of a worker (starting one takes seconds;
    the modules that use it skip without pyspark)."""
    from totes.utils.spark import spark_session

    session = spark_session("totes-tests", "local[2]")
    yield session
    session.stop()


def pytest_collection_modifyitems(config, items):
    """Mark each test by the outside parts it needs (``mariadb``, ``spark``, ``browser``,
    ``emulator``), so that ``make test-fast`` can leave exactly those out."""
    for item in items:
        for fixture, marker in _PART_OF_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
        if "test_spark_extract" in item.nodeid or "test_spark_stages" in item.nodeid:
            item.add_marker("spark")


# ---- change data capture -------------------------------------------------------------------
def cdc_config(tmp_path, tables: tuple[str, ...], slot: str) -> str:
    """A copy of the shipped configuration with ``tables`` read from the change log through
    ``slot`` (slots are the server's, shared by every test database: one per test)."""
    import yaml

    document = yaml.safe_load(open(CONFIG).read())
    for table in tables:
        document["tables"][table] = {"extract_type": "cdc"}
    document["cdc"] = {"slot": slot, "publication": "totes_cdc"}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cdc.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


#: The tables the cdc tests read from the log: the facts, and ``transaction``, whose rows a
#: delete of a sales or purchase order changes (ON DELETE SET NULL) without moving
#: ``last_updated``.
CDC_TABLES = ("sales_order", "purchase_order", "payment", "transaction")


@pytest.fixture
def with_cdc(tmp_path):
    """``with_cdc(resources, tables=CDC_TABLES, **cdc)`` → ``resources`` whose ``tables`` are
    on ``cdc`` (a slot of its own, created with its publication as ``totes cdc init`` does,
    dropped at the end; ``cdc`` adds to the configuration's ``cdc`` section)."""
    from dataclasses import replace

    from totes.contracts.config import capture_plan, resolve_tables
    from totes.ingest.capture import drop_source, init_source
    from totes.utils.config_file import load_config

    made = []

    def make(resources, tables=CDC_TABLES, **options):
        import yaml

        slot = f"totes_test_{uuid.uuid4().hex[:10]}"
        path = cdc_config(tmp_path / f"config-{len(made)}", tables, slot)
        document = yaml.safe_load(open(path).read())
        document["cdc"].update(options)
        open(path, "w").write(yaml.safe_dump(document))
        config = load_config(path)
        plan = capture_plan(config, resolve_tables(config))
        init_source(plan, resources.source)
        made.append((plan, resources.source))
        return replace(resources, config_path=path)

    yield make
    for plan, source in made:
        drop_source(plan, source)


@pytest.fixture
def cdc_resources(resources, with_cdc):
    """``resources`` with :data:`CDC_TABLES` on ``cdc``."""
    return with_cdc(resources)
