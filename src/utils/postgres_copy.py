"""Bulk data through PostgreSQL's COPY: Arrow record batches into a table (CSV or binary
format, :func:`copy_into`, :func:`copy_binary_into`) and a query's rows out as Arrow record
batches (:func:`copy_stream`, :func:`csv_record_batches`). Memory is one record batch, whatever
the table's size.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import BinaryIO, Iterator, Optional

import pyarrow as pa
import pyarrow.csv as pacsv

from totes.contracts.errors import DataError, TotesError
from totes.contracts.identifiers import qualified, quote_ident
from totes.contracts.quarantine import UNREADABLE, add_unreadable
from totes.utils.postgres_errors import translate_error

#: The largest CSV block a row may need (pyarrow's block size is a 32-bit int).
MAX_RECORD_BATCH_BYTES = (1 << 31) - 1


class RowLargerThanBlock(Exception):
    """A row did not fit in one CSV block of ``record_batch_bytes``; the extract is redone
    with larger blocks."""


def copy_into(conn, table: str, columns: list[str], batches) -> None:
    """Bulk-load Arrow record ``batches`` into ``table`` (``columns`` in batch order) with
    ``COPY ... FROM STDIN (FORMAT csv)``, one CSV chunk per batch: bounded memory, no row-by-row
    INSERT. CSV follows PostgreSQL's rules: an unquoted empty field is NULL, ``""`` is an empty
    string."""
    import io

    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False)

    def chunks():
        for batch in batches:
            if batch.num_rows:
                buffer = io.BytesIO()
                pacsv.write_csv(batch, buffer, options)
                yield buffer.getvalue()

    column_list = ", ".join(quote_ident(c) for c in columns)
    conn.run(f"COPY {quote_ident(table)} ({column_list}) FROM STDIN WITH (FORMAT csv)",
             stream=chunks())


def copy_binary_into(conn, table: str, schema, batches,
                     in_schema: Optional[str] = None) -> int:
    """Bulk-load Arrow record ``batches`` into ``table`` (of the database schema
    ``in_schema`` when given) with ``COPY ... FROM STDIN (FORMAT binary)``, one encoded chunk
    per batch (bounded memory); returns the rows copied.

    ``schema`` (a ``pyarrow.Schema``) names the columns, in order, and their Arrow types, which
    must be those of the table's columns (int32 for ``int``, decimal128 for ``numeric``,
    date32, time64[us], timestamp[us], string for ``varchar``/``text``, bool): each batch is
    cast to it, then encoded by pgpq (PostgreSQL's binary COPY format, from Arrow's buffers).
    The server then converts no text: on 2,000,000 fact rows of 14 columns this COPY took
    2.2 s where ``FORMAT csv`` (:func:`copy_into`) took 3.8-4.1 s.

    Raises:
        DatabaseError: the server refused the data (a type that is not the column's gives
            ``incorrect binary data format``, SQLSTATE 22P03).
    """
    import pgpq

    encoder = pgpq.ArrowToPostgresBinaryEncoder(schema)

    def chunks():
        yield encoder.write_header()
        for batch in batches:
            if batch.num_rows:  # small batches are kept until enough, or the end, comes
                encoded = encoder.write_batch(batch.select(schema.names).cast(schema))
                if encoded:
                    yield encoded
        yield encoder.finish()

    column_list = ", ".join(quote_ident(c) for c in schema.names)
    target = qualified(in_schema, table) if in_schema else quote_ident(table)
    conn.run(f"COPY {target} ({column_list}) FROM STDIN WITH (FORMAT binary)",
             stream=chunks())
    return conn.row_count


@contextlib.contextmanager
def copy_stream(conn, sql: str, doing: str) -> Iterator[BinaryIO]:
    """Run ``COPY ... TO STDOUT`` in a thread writing into a pipe; yields the pipe's reading
    end, which the caller reads to its end. A failure of either side raises, the database's
    first (unless the caller's is one of ours: bad data, a row larger than a block)."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb", buffering=1 << 20)
    writer = os.fdopen(write_fd, "wb", buffering=1 << 20)
    failures: list[BaseException] = []

    def produce():
        try:
            conn.run(sql, stream=writer)
        except BaseException as exc:  # handed to the consuming thread below, which raises it
            failures.append(exc)
        finally:
            try:
                writer.close()
            except OSError:
                pass  # the consumer closed its end first; its own error is raised

    thread = threading.Thread(target=produce, name="copy-out", daemon=True)
    thread.start()
    try:
        yield reader
    except BaseException as consumer_error:
        reader.close()
        thread.join()
        # The consumer's own error comes first when it is one of ours (bad data, a row larger
        # than a block, a full disk): the database then only saw its end of the pipe close.
        if failures and not isinstance(consumer_error, (RowLargerThanBlock, TotesError)):
            raise translate_error(failures[0], doing) from consumer_error
        raise
    reader.close()
    thread.join()
    if failures:
        raise translate_error(failures[0], doing) from failures[0]


def copy_through_pipe(conn, sql: str, consume, doing: str):
    """:func:`copy_stream`, the pipe given to ``consume(reader)``; returns what it returns."""
    with copy_stream(conn, sql, doing) as reader:
        return consume(reader)


def csv_record_batches(reader, schema: pa.Schema, table: str, block_bytes: int = 8 << 20,
                       pool: Optional[pa.MemoryPool] = None) -> Iterator[pa.RecordBatch]:
    """Record batches of ``schema`` parsed from PostgreSQL's CSV in ``reader`` (NULL is an
    unquoted empty field, booleans ``t``/``f``), ``block_bytes`` of CSV each; none for an
    empty stream.

    When ``schema`` is a lake file's (it has :data:`~totes.contracts.quarantine.UNREADABLE`),
    text that is not UTF-8 (bytes a database in ``SQL_ASCII`` hands out as they are) is NULL
    in its column and kept, escaped, in that column: it stops nothing and is not lost.

    Raises:
        RowLargerThanBlock: a row does not fit in one block.
        DataError: a value could not be read as its column's type (names ``table``).
    """
    if not reader.peek(1):
        return
    texts = [f.name for f in schema if pa.types.is_string(f.type) and f.name != UNREADABLE] \
        if UNREADABLE in schema.names else []
    read_as = pa.schema([pa.field(f.name, pa.binary()) if f.name in texts else f
                         for f in schema])
    try:  # opening reads the first block: its errors are the stream's
        for batch in pacsv.open_csv(
            reader,
            # One thread: Arrow's readahead threads would read the pipe (a Python file) and
            # allocate from this extract's memory pool after it ends; a crash seen in testing.
            read_options=pacsv.ReadOptions(column_names=schema.names, block_size=block_bytes,
                                           use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=read_as, true_values=["t"], false_values=["f"],
                null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False),
                memory_pool=pool):
            yield _as_text(batch, schema, texts) if texts else batch
    except pa.ArrowInvalid as exc:
        if "straddl" in str(exc):  # "straddling object straddles two block boundaries"
            raise RowLargerThanBlock(str(exc)) from exc
        raise DataError(table, f"has a value that cannot be read as its column's type: "
                        f"{exc}") from None


def _as_text(batch: pa.RecordBatch, schema: pa.Schema, texts: list[str]) -> pa.RecordBatch:
    """``batch`` (its ``texts`` columns read as bytes) in ``schema``: each text column
    checked as UTF-8 (one pass); a value that is not is NULL, and kept in
    :data:`~totes.contracts.quarantine.UNREADABLE` with its bytes escaped
    (``'caf\\xe9'``)."""
    columns = {name: batch.column(name) for name in batch.schema.names}
    found = None
    for name in texts:
        try:
            columns[name] = columns[name].cast(pa.string())
            continue
        except pa.ArrowInvalid:
            pass
        values = columns[name].to_pylist()
        if found is None:
            found = columns[UNREADABLE].to_pylist()
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                values[i] = value.decode("utf-8")
            except UnicodeDecodeError:
                found[i] = add_unreadable(found[i], name,
                                          value.decode("utf-8", "backslashreplace"))
                values[i] = None
        columns[name] = pa.array(values, pa.string())
    if found is not None:
        columns[UNREADABLE] = pa.array(found, pa.string())
    return pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)
