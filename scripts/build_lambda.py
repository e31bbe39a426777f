"""Build the Lambda artifacts: the dependency layer and the code package, and measure them.

    python scripts/build_lambda.py layer     # build/layer.zip: the stages' dependencies
    python scripts/build_lambda.py package   # build/code.zip: src/ as the package totes + config
    python scripts/build_lambda.py smoke-test  # the same trim for this Python, imports checked
    python scripts/build_lambda.py glue      # build/glue/: the Glue job's totes wheel and script

The layer holds the runtime requirements of the stages (pyproject [project.dependencies], exact
versions from requirements.txt; boto3 comes with the Lambda runtime) as wheels for the
python3.12 runtime on x86_64 (Amazon Linux 2023, glibc 2.34). It is trimmed of what the
pipeline never loads: pyarrow's Flight RPC libraries, C++ headers, tests and Cython sources,
pycountry's translations, __pycache__. Each build prints the unzipped size and fails if the
layer and the code together pass Lambda's limit of 250 MB unzipped (262,144,000 bytes).

The Glue job's artifacts are the code package's files as a pure-Python wheel
(``totes-<version>-py3-none-any.whl``, for ``--additional-python-modules``; its dependencies
are listed there, pinned, by main-terraform) and an entry script that runs
:func:`totes.ingest.glue_job.main`.
"""
from __future__ import annotations

import os
import re
import shutil
# Runs pip with a fixed argument list.
import subprocess  # nosec B404
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build"
LIMIT = 262_144_000  # bytes, Lambda's function + layers unzipped limit
LAYER_PACKAGES = ("pyarrow", "pg8000", "pgpq", "PyMySQL", "mysql-replication", "packaging",
                  "python-dateutil", "pydantic", "pydantic-settings", "python-dotenv", "PyYAML",
                  "pycountry", "adbc-driver-postgresql", "adbc-driver-manager",
                  "aws-lambda-powertools")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
TRIM = [
    "pyarrow/include", "pyarrow/tests", "pyarrow/src", "pycountry/locales",
    "pyarrow/libarrow_flight.so*", "pyarrow/libarrow_python_flight.so*", "pyarrow/_flight*",
    "pyarrow/flight.py", "pyarrow/*.pyx", "pyarrow/*.pxd", "pyarrow/includes",
    "pyarrow/libarrow_python.so", "pyarrow/libarrow_python.so.*.*.*",
    "**/__pycache__", "*.dist-info/RECORD", "pymysqlreplication/tests",
]


def pinned(names) -> list[str]:
    """``name==version`` for ``names`` from requirements.txt."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if match:
            pins[match.group(1).lower()] = f"{match.group(1)}=={match.group(2)}"
    return [pins[n.lower()] for n in names]


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def zip_folder(folder: Path, target: Path) -> None:
    """A zip of ``folder`` with fixed timestamps, so the same input gives the same bytes."""
    target.unlink(missing_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(str(path.relative_to(folder)), (1980, 1, 1, 0, 0, 0))
                info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())


def install_trimmed(target: Path, python_version: str) -> tuple[int, int]:
    """Install the layer's packages for CPython ``python_version`` on x86_64 into ``target``
    and trim them; returns the sizes before and after, in bytes."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
               "--target", str(target), "--python-version", python_version,
               "--implementation", "cp", "--only-binary=:all:",
               *[f"--platform={p}" for p in PLATFORMS], *pinned(LAYER_PACKAGES)]
    # Fixed command, pinned packages.
    subprocess.run(command, check=True)  # nosec B603
    before = size_of(target)
    for pattern in TRIM:
        for path in target.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return before, size_of(target)


SMOKE = """
import io, pyarrow as pa, pyarrow.csv, pyarrow.parquet as pq, pyarrow.compute as pc, pyarrow.fs
import pycountry, pg8000.native, pgpq, pymysql, pydantic, pydantic_settings, yaml
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import \
    AmazonCloudWatchEMFProvider
assert pa.__file__.startswith(sys.argv[1]), pa.__file__
batch = pa.csv.read_csv(io.BytesIO(b"1,2.50,t"), read_options=pa.csv.ReadOptions(
    column_names=["i", "m", "b"]), convert_options=pa.csv.ConvertOptions(column_types={
    "i": pa.int32(), "m": pa.decimal128(10, 2), "b": pa.bool_()}, true_values=["t"]))
sink = io.BytesIO(); pq.write_table(batch, sink, compression="zstd")
assert pq.read_table(io.BytesIO(sink.getvalue())).equals(batch)
assert pc.strftime(pa.array([0], pa.timestamp("s")), format="%A").to_pylist() == ["Thursday"]
assert pycountry.currencies.get(alpha_3="GBP").name == "Pound Sterling"
pa.fs.S3FileSystem(region="eu-west-2", anonymous=True)
encoder = pgpq.ArrowToPostgresBinaryEncoder(batch.schema)
copy = encoder.write_header() + encoder.write_batch(batch.to_batches()[0]) + encoder.finish()
assert copy[:6] == b"PGCOPY" and copy[-2:] == bytes([255, 255]) and len(copy) > 40, copy
import adbc_driver_manager, adbc_driver_postgresql, adbc_driver_postgresql.dbapi
try:  # the driver's shared library and its libpq load, and refuse a closed port
    adbc_driver_postgresql.dbapi.connect("postgresql://nobody@127.0.0.1:1/none")
    raise AssertionError("connected to port 1")
except adbc_driver_manager.OperationalError as exc:
    assert "[libpq] Failed to connect" in str(exc), exc
emf = AmazonCloudWatchEMFProvider(namespace="totes", service="")
emf.add_dimension(name="table", value="sales_order")
emf.add_metric(name="RowsExtracted", unit="Count", value=3)
assert emf.serialize_metric_set()["RowsExtracted"] == [3.0]
print("layer smoke test: pyarrow csv/parquet/compute/S3, pg8000, pgpq, pymysql, pydantic, "
      "pydantic-settings, yaml, pycountry, the ADBC PostgreSQL driver, "
      "aws-lambda-powertools ok")
"""


def smoke_test() -> None:
    """The layer's trimming, checked on this machine: the same packages and trim for this
    interpreter's version, then the pipeline's imports and Arrow operations against them only
    (Lambda's python3.12 cannot run here; the files removed are the same)."""
    import tempfile

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="totes-layer-") as folder:
        install_trimmed(Path(folder), version)
        code = "import sys; sys.path.insert(0, sys.argv[1])\n" + SMOKE
        # This interpreter, running the fixed smoke test on the trimmed folder.
        subprocess.run([sys.executable, "-I", "-c", code, folder],  # nosec B603
                       check=True)


def build_layer() -> int:
    folder = BUILD / "layer"
    shutil.rmtree(folder, ignore_errors=True)
    target = folder / "python"
    before, after = install_trimmed(target, "3.12")
    zip_folder(folder, BUILD / "layer.zip")
    print(f"layer: {after / 1e6:.1f} MB unzipped (trimmed from {before / 1e6:.1f} MB), "
          f"{(BUILD / 'layer.zip').stat().st_size / 1e6:.1f} MB zipped -> build/layer.zip")
    return after


def build_package() -> int:
    folder = BUILD / "code"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(REPO / "src", folder / "totes",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "cli.py", "local"))
    shutil.copytree(REPO / "config", folder / "config")
    size = size_of(folder)
    zip_folder(folder, BUILD / "code.zip")
    print(f"code: {size / 1e6:.2f} MB unzipped -> build/code.zip")
    return size


GLUE_SCRIPT = '''"""The totes Glue job's script (written by scripts/build_lambda.py glue): extract
the table named by --payload on the job's Spark. The code is the totes wheel of
--additional-python-modules; an error raised here fails the job run, and the state machine
records and alerts it."""
from totes.ingest.glue_job import main

main()
'''

GLUE_STAGES_SCRIPT = '''"""The totes Glue job's script that transforms and loads on Spark
(written by scripts/build_lambda.py glue): the facts of the tables of --tables built and
staged by Spark tasks, round after round until nothing is pending; the result is left at
--result_key of the processed area. An error raised here fails the job run, and the state
machine alerts it."""
from totes.jobs.glue_stages import main

main()
'''


def project_version() -> str:
    """The version in pyproject.toml."""
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def build_glue() -> Path:
    """build/glue/totes-<version>-py3-none-any.whl (the code package's ``totes`` files, with
    the wheel's metadata and RECORD), build/glue/totes_extract.py and
    build/glue/totes_stages.py; returns the wheel."""
    import base64
    import hashlib

    folder = BUILD / "glue"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    version = project_version()
    info = f"totes-{version}.dist-info"
    files: dict[str, bytes] = {}
    source = REPO / "src"
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and "__pycache__" not in relative.parts and path.suffix != ".pyc" \
                and relative.parts[0] not in ("local", "cli.py"):
            files[f"totes/{relative.as_posix()}"] = path.read_bytes()
    files[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: totes\nVersion: {version}\n"
                                 "Summary: totes stages (the Glue job's code)\n"
                                 "Requires-Python: >=3.11\n").encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: totes build_lambda.py\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    records = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{name},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\n".join(records + [f"{info}/RECORD,,"]) + "\n").encode()
    wheel = folder / f"totes-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    (folder / "totes_extract.py").write_text(GLUE_SCRIPT)
    (folder / "totes_stages.py").write_text(GLUE_STAGES_SCRIPT)
    print(f"glue: {wheel.stat().st_size / 1e6:.2f} MB -> build/glue/{wheel.name}, "
          "build/glue/totes_extract.py, build/glue/totes_stages.py")
    return wheel


def check_limit() -> None:
    total = sum(size_of(BUILD / part) for part in ("layer", "code") if (BUILD / part).exists())
    print(f"function + layer: {total / 1e6:.1f} MB of Lambda's {LIMIT / 1e6:.1f} MB unzipped")
    if total > LIMIT:
        sys.exit(f"too large: {total:,} bytes > {LIMIT:,}")


def main(argv: list[str]) -> None:
    import fcntl

    BUILD.mkdir(exist_ok=True)
    steps = {"layer": build_layer, "package": build_package, "smoke-test": smoke_test,
             "glue": build_glue}
    if not argv or any(a not in steps for a in argv):
        sys.exit("usage: build_lambda.py layer|package|smoke-test|glue [...]")
    # Terraform runs the layer and package builds at once: one at a time, so that neither
    # measures the other's half-written folder.
    with open(BUILD / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for step in argv:
            steps[step]()
        if "smoke-test" not in argv and argv != ["glue"]:
            check_limit()


if __name__ == "__main__":
    main(sys.argv[1:])
