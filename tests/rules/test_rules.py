"""Derivation rules that the snapshot alone does not exercise: dim_date, bad data held in
quarantine by name."""
from datetime import date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from totes.contracts.errors import DataError
from totes.rules.dimensions import currency_name, dim_currency, dim_date, latest_per_key
from totes.rules.facts import fact_rows


def test_dim_date_is_iso_with_english_names_and_no_fixed_range():
    rows = dim_date(pa.array([date(2031, 12, 28), date(1999, 1, 4), date(2031, 12, 28)]))
    assert rows.to_pylist() == [
        {"date_id": date(1999, 1, 4), "year": 1999, "month": 1, "day": 4, "day_of_week": 1,
         "day_name": "Monday", "month_name": "January", "quarter": 1},
        {"date_id": date(2031, 12, 28), "year": 2031, "month": 12, "day": 28,
         "day_of_week": 7, "day_name": "Sunday", "month_name": "December", "quarter": 4}]


def test_currency_names_come_from_iso_4217_and_an_unknown_code_is_held():
    assert currency_name("GBP") == "Pound Sterling" and currency_name("usd ") == "US Dollar"
    moment = datetime(2024, 11, 15)
    checked = dim_currency(pa.table({"currency_id": pa.array([1, 9], pa.int32()),
                                     "currency_code": ["GBP", "XYZ"],
                                     "created_at": [moment] * 2, "last_updated": [moment] * 2}))
    assert checked.rows["currency_id"].to_pylist() == [1]
    [record] = checked.held.to_pylist()
    assert record["_totes_message"] == ("currency row currency_id=9: currency_code 'XYZ' has "
                                        "no ISO 4217 name")
    assert (record["currency_id"], record["_totes_rule"], record["_totes_value"]) == \
        (9, "iso_4217", "XYZ")


def payment_batch(payment_date):
    moment = datetime(2024, 11, 15, 14, 40, 10, 123000)
    return pa.RecordBatch.from_pydict({
        "payment_id": pa.array([7, 8], pa.int32()),
        "created_at": pa.array([moment] * 2, pa.timestamp("ms")),
        "last_updated": pa.array([moment] * 2, pa.timestamp("ms")),
        "transaction_id": pa.array([1, 2], pa.int32()),
        "counterparty_id": pa.array([1, 1], pa.int32()),
        "payment_amount": pa.array([Decimal("1.50"), Decimal("2.00")], pa.decimal128(10, 2)),
        "currency_id": pa.array([1, 1], pa.int32()),
        "payment_type_id": pa.array([1, 1], pa.int32()),
        "paid": [True, False],
        "payment_date": ["2024-11-20", payment_date],
        "company_ac_number": pa.array([1, 1], pa.int32()),
        "counterparty_ac_number": pa.array([1, 1], pa.int32()),
    })


def test_a_fact_splits_timestamps_and_parses_text_dates():
    checked = fact_rows(payment_batch("2024-11-21"), "payment")
    assert checked.held is None
    rows = checked.rows.to_pylist()
    assert rows[1]["payment_date"] == date(2024, 11, 21)
    assert rows[0]["payment_amount"] == Decimal("1.50")
    assert rows[0]["created_time"].isoformat() == "14:40:10.123000"
    assert "company_ac_number" not in rows[0]


def held_messages(checked) -> list:
    return checked.held["_totes_message"].to_pylist() if checked.held is not None else []


@pytest.mark.parametrize("bad", ["2024-1-5", "21/11/2024", "2024-02-30"])
def test_a_bad_text_date_is_held_naming_the_table_row_and_column(bad):
    checked = fact_rows(payment_batch(bad), "payment")
    assert checked.rows["payment_id"].to_pylist() == [7]  # the other row goes on
    assert held_messages(checked) == [f"payment row payment_id=8: payment_date '{bad}' is not "
                                      "a YYYY-MM-DD date"]


def test_latest_per_key_keeps_the_newest_version():
    rows = pa.table({"k": [2, 1, 2, 1], "last_updated": [1, 5, 9, 2], "v": ["a", "b", "c", "d"]})
    assert latest_per_key(rows, "k").to_pylist() == [
        {"k": 1, "last_updated": 5, "v": "b"}, {"k": 2, "last_updated": 9, "v": "c"}]


def test_a_microsecond_timestamp_keeps_its_microseconds_and_a_finer_one_is_truncated():
    from totes.rules.columns import split_timestamp

    moments = pa.array([datetime(2024, 11, 15, 14, 40, 10, 123456), None], pa.timestamp("us"))
    dates, times = split_timestamp(moments)
    assert dates.to_pylist() == [date(2024, 11, 15), None]
    assert times.to_pylist()[0].isoformat() == "14:40:10.123456"
    nanos = pa.array([1_700_000_000_123_456_789], pa.timestamp("ns"))
    assert split_timestamp(nanos)[1].to_pylist()[0].isoformat() == "22:13:20.123456"
    batch = payment_batch("2024-11-21")
    with_micros = batch.set_column(2, "last_updated", pa.array(
        [datetime(2024, 11, 15, 14, 40, 10, 123456)] * 2, pa.timestamp("us")))
    rows = fact_rows(with_micros, "payment").rows.to_pylist()
    assert rows[0]["last_updated_time"].isoformat() == "14:40:10.123456"


def test_a_value_too_large_for_the_warehouse_names_its_row():
    batch = payment_batch("2024-11-21")
    big = batch.set_column(5, "payment_amount", pa.array(
        [Decimal("1.50"), Decimal("123456789.00")], pa.decimal128(12, 2)))
    assert held_messages(fact_rows(big, "payment")) == [
        "payment row payment_id=8: payment_amount 123456789.00 does not fit "
        "fact_payment.payment_amount (numeric(10, 2))"]


def test_many_bad_rows_are_each_held_once_with_their_first_violation():
    from totes.rules.columns import rows_that_do_not_fit

    values = pa.array([Decimal(i) * 10_000_000 if i % 1000 == 0 else Decimal(i)
                       for i in range(1, 10_001)], pa.decimal128(14, 2))
    assert rows_that_do_not_fit(values, pa.decimal128(10, 2)) == list(range(999, 10_000, 1000))
    batch = payment_batch("bad")
    batch = batch.set_column(5, "payment_amount", pa.array(
        [Decimal("1.50"), Decimal("123456789.00")], pa.decimal128(12, 2)))
    checked = fact_rows(batch, "payment")  # row 8 breaks two rules: the first is kept
    assert held_messages(checked) == ["payment row payment_id=8: payment_date 'bad' is not a "
                                      "YYYY-MM-DD date"]


def test_a_violation_without_row_ids_still_names_the_table_and_column():
    from totes.rules.columns import conform
    from totes.contracts.quarantine import Violations
    from totes.contracts.star_schema import TABLES

    columns = {"payment_type_id": pa.array([1], pa.int32()),
               "payment_type_name": pa.array([None], pa.string()),
               "source_last_updated": pa.array([datetime(2024, 1, 1)], pa.timestamp("us")),
               "source_lsn": pa.array([0], pa.int64()), "is_deleted": pa.array([False])}
    violations = Violations("payment_type", "no_such_id_column", pa.table(columns))
    checked = conform(columns, TABLES["dim_payment_type"], violations)
    assert checked.rows.num_rows == 0
    assert [str(e) for e in violations.errors()] == [
        "payment_type: payment_type_name is empty but dim_payment_type.payment_type_name is "
        "NOT NULL"]
    assert isinstance(violations.errors()[0], DataError)
