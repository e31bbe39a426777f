"""The schema record of a lake batch and the schema contract's decisions, on Arrow data (the
end-to-end behaviour on real servers is in tests/test_schema_evolution.py)."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from totes.contracts.errors import LakeError, SourceSchemaError
from totes.contracts.quarantine import UNREADABLE
from totes.contracts.source_schema import (SchemaContract, SchemaRecord, SourceColumn,
                                           arrow_type_of, classify, decide,
                                           parse_schema_record, record_of_arrow,
                                           schema_footer)
from totes.contracts.watermark import parse_footer


@pytest.mark.parametrize("old, new, old_source, new_source, expected", [
    (pa.int32(), pa.int64(), "integer", "bigint", "widened"),
    (pa.int64(), pa.int16(), "bigint", "smallint", "narrowed"),
    (pa.decimal128(10, 2), pa.decimal128(12, 2), None, None, "widened"),
    (pa.decimal128(10, 2), pa.decimal128(38, 9), "numeric(10,2)", "numeric", "widened"),
    (pa.decimal128(12, 2), pa.decimal128(10, 2), None, None, "narrowed"),
    (pa.decimal128(12, 4), pa.decimal128(12, 2), None, None, "changed"),
    (pa.decimal128(10, 2), pa.decimal128(10, 4), None, None, "changed"),
    (pa.int32(), pa.decimal128(38, 9), "integer", "numeric", "widened"),
    (pa.int32(), pa.decimal128(6, 0), "integer", "numeric(6,0)", "changed"),
    (pa.string(), pa.string(), "character varying(10)", "character varying(20)", "widened"),
    (pa.string(), pa.string(), "character varying(20)", "text", "widened"),
    (pa.string(), pa.string(), "text", "character varying(200)", "narrowed"),
    (pa.string(), pa.string(), "text", "text", "same"),
    (pa.timestamp("ms"), pa.timestamp("us"), "timestamp(3) without time zone",
     "timestamp without time zone", "widened"),
    (pa.timestamp("us"), pa.timestamp("ms", tz="UTC"), None, None, "changed"),
    (pa.float32(), pa.float64(), "real", "double precision", "widened"),
    (pa.int32(), pa.string(), "integer", "text", "changed"),
])
def test_how_a_type_changed(old, new, old_source, new_source, expected):
    assert classify(old, new, old_source, new_source) == expected


def test_arrow_types_read_back_from_their_text():
    for kind in (pa.int32(), pa.int64(), pa.decimal128(38, 9), pa.timestamp("ms"),
                 pa.timestamp("us", tz="UTC"), pa.string(), pa.date32(), pa.bool_()):
        assert arrow_type_of(str(kind)) == kind
    with pytest.raises(LakeError, match="unknown Arrow type 'list<item: int32>'"):
        arrow_type_of("list<item: int32>")


def _columns(**types) -> list[SourceColumn]:
    return [SourceColumn(name, kind, source) for name, (kind, source) in types.items()]


def test_the_first_batch_is_version_1_and_a_change_adds_one():
    first = decide("t", None, _columns(t_id=(pa.int32(), "integer"),
                                       n=(pa.int32(), "integer")), SchemaContract())
    assert (first.record.version, first.changes) == (1, [])
    same = decide("t", first.record, _columns(t_id=(pa.int32(), "integer"),
                                              n=(pa.int32(), "integer")), SchemaContract())
    assert (same.record.version, same.changes) == (1, [])
    wider = decide("t", same.record, _columns(t_id=(pa.int32(), "integer"),
                                              n=(pa.int64(), "bigint"),
                                              note=(pa.string(), "text")),
                   SchemaContract(), moment="2026-12-05 03:00:00")
    assert wider.record.version == 2 and wider.record.changed_at == "2026-12-05 03:00:00"
    assert [c.describe() for c in wider.changes] == [
        "n integer → bigint (widened)", "note added (text)"]
    assert wider.lake_schema.names == ["t_id", "n", "note", UNREADABLE]
    assert wider.lake_schema.field("n").type == pa.int64()
    dropped = decide("t", wider.record, _columns(t_id=(pa.int32(), "integer"),
                                                 n=(pa.int64(), "bigint")), SchemaContract())
    assert dropped.record.version == 3
    assert [c.describe() for c in dropped.changes] == ["note dropped (was text)"]


def test_discard_value_keeps_the_lakes_type_and_keeps_what_does_not_cast_as_text():
    before = decide("t", None, _columns(t_id=(pa.int32(), "integer"),
                                        n=(pa.int32(), "integer")), SchemaContract())
    contract = SchemaContract(data_type="discard_value")
    after = decide("t", before.record, _columns(t_id=(pa.int32(), "integer"),
                                                n=(pa.string(), "text")), contract)
    assert after.changes[0].action == "values_cast"
    batch = pa.record_batch({"t_id": pa.array([1, 2, 3], pa.int32()),
                             "n": pa.array(["7", "many", None]),
                             UNREADABLE: pa.nulls(3, pa.string())})
    written = after.apply(batch)
    assert written.schema == after.lake_schema
    assert written.column("n").to_pylist() == [7, None, None]
    assert [json.loads(v) if v else None for v in written.column(UNREADABLE).to_pylist()] == \
        [None, {"n": "many"}, None]
    # The next batch, still text in the source, is cast the same way: no new change.
    again = decide("t", after.record, _columns(t_id=(pa.int32(), "integer"),
                                               n=(pa.string(), "text")), contract)
    assert (again.record.version, again.changes, again.casts) == (2, [], {"n": pa.int32()})


def test_a_frozen_contract_names_the_column_and_the_types():
    before = decide("t", None, _columns(t_id=(pa.int32(), "integer"),
                                        n=(pa.int64(), "bigint")), SchemaContract())
    with pytest.raises(SourceSchemaError, match="t.n changed type from bigint to integer "
                                                r"\(narrowed: the lake holds int64\)"):
        decide("t", before.record, _columns(t_id=(pa.int32(), "integer"),
                                            n=(pa.int32(), "integer")), SchemaContract())
    with pytest.raises(SourceSchemaError, match="table t has a new column 'x' \\(date\\)"):
        decide("t", before.record, _columns(t_id=(pa.int32(), "integer"),
                                            n=(pa.int64(), "bigint"), x=(pa.date32(), "date")),
               SchemaContract(columns="freeze"))


def test_an_unbounded_numeric_value_beyond_the_lake_stops_a_frozen_table():
    column = SourceColumn("amount", pa.decimal128(38, 9), "numeric", True, unbounded=True)
    frozen = decide("t", None, [column], SchemaContract())
    batch = pa.record_batch({"amount": pa.array([None], pa.decimal128(38, 9)),
                             UNREADABLE: pa.array(['{"amount": "1e+30"}'])})
    with pytest.raises(SourceSchemaError, match="t.amount holds '1e\\+30', beyond "
                                                r"decimal128\(38, 9\)"):
        frozen.apply(batch)
    discarding = decide("t", None, [column], SchemaContract(data_type="discard_value"))
    assert discarding.apply(batch).column(UNREADABLE).to_pylist() == ['{"amount": "1e+30"}']


def test_the_record_rides_in_the_footer_and_old_footers_read_as_version_1():
    record = decide("t", None, _columns(t_id=(pa.int32(), "integer")), SchemaContract()).record
    metadata = {b"totes.high_watermark": b"null"} | {
        k: v.encode() for k, v in schema_footer(record).items()}
    assert parse_footer(metadata, "f").source_schema == record
    old = parse_footer({b"totes.high_watermark": b"null"}, "f")
    assert (old.source_schema, old.schema_version) == (None, 1)
    assert parse_schema_record({}, "f") is None
    with pytest.raises(LakeError, match="f has a malformed totes.schema"):
        parse_schema_record({b"totes.schema": b'{"columns": 3}'}, "f")
    assert record_of_arrow(pa.schema([("t_id", pa.int32()), (UNREADABLE, pa.string()),
                                      ("_totes_operation", pa.string())])) == \
        SchemaRecord(columns=[{"name": "t_id", "type": "int32"}])
