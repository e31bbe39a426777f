"""Derivation rules that the snapshot alone does not exercise: dim_date, bad data."""
from datetime import date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from totes.transform.dimensions import currency_name, dim_date, latest_per_key
from totes.transform.facts import fact_rows
from totes.utils.errors import DataError


def test_dim_date_is_iso_with_english_names_and_no_fixed_range():
    rows = dim_date(pa.array([date(2031, 12, 28), date(1999, 1, 4), date(2031, 12, 28)]))
    assert rows.to_pylist() == [
        {"date_id": date(1999, 1, 4), "year": 1999, "month": 1, "day": 4, "day_of_week": 1,
         "day_name": "Monday", "month_name": "January", "quarter": 1},
        {"date_id": date(2031, 12, 28), "year": 2031, "month": 12, "day": 28,
         "day_of_week": 7, "day_name": "Sunday", "month_name": "December", "quarter": 4}]


def test_currency_names_come_from_iso_4217():
    assert currency_name("GBP", 1) == "Pound Sterling"
    assert currency_name("USD", 2) == "US Dollar"
    with pytest.raises(DataError, match="currency_id=9: currency_code 'XYZ' has no ISO 4217"):
        currency_name("XYZ", 9)


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
    rows = fact_rows(payment_batch("2024-11-21"), "payment").to_pylist()
    assert rows[1]["payment_date"] == date(2024, 11, 21)
    assert rows[0]["payment_amount"] == Decimal("1.50")
    assert rows[0]["created_time"].isoformat() == "14:40:10.123000"
    assert "company_ac_number" not in rows[0]


@pytest.mark.parametrize("bad", ["2024-1-5", "21/11/2024", "2024-02-30"])
def test_a_bad_text_date_names_the_table_row_and_column(bad):
    with pytest.raises(DataError, match=f"payment row payment_id=8: payment_date '{bad}' is not "
                                        "a YYYY-MM-DD date"):
        fact_rows(payment_batch(bad), "payment")


def test_latest_per_key_keeps_the_newest_version():
    rows = pa.table({"k": [2, 1, 2, 1], "last_updated": [1, 5, 9, 2], "v": ["a", "b", "c", "d"]})
    assert latest_per_key(rows, "k").to_pylist() == [
        {"k": 1, "last_updated": 5, "v": "b"}, {"k": 2, "last_updated": 9, "v": "c"}]


def test_a_microsecond_timestamp_keeps_its_microseconds_and_a_finer_one_is_truncated():
    from totes.transform.columns import split_timestamp

    moments = pa.array([datetime(2024, 11, 15, 14, 40, 10, 123456), None], pa.timestamp("us"))
    dates, times = split_timestamp(moments)
    assert dates.to_pylist() == [date(2024, 11, 15), None]
    assert times.to_pylist()[0].isoformat() == "14:40:10.123456"
    nanos = pa.array([1_700_000_000_123_456_789], pa.timestamp("ns"))
    assert split_timestamp(nanos)[1].to_pylist()[0].isoformat() == "22:13:20.123456"
    batch = payment_batch("2024-11-21")
    with_micros = batch.set_column(2, "last_updated", pa.array(
        [datetime(2024, 11, 15, 14, 40, 10, 123456)] * 2, pa.timestamp("us")))
    rows = fact_rows(with_micros, "payment").to_pylist()
    assert rows[0]["last_updated_time"].isoformat() == "14:40:10.123456"


def test_a_value_too_large_for_the_warehouse_names_its_row():
    batch = payment_batch("2024-11-21")
    big = batch.set_column(5, "payment_amount", pa.array(
        [Decimal("1.50"), Decimal("123456789.00")], pa.decimal128(12, 2)))
    with pytest.raises(DataError, match=r"payment row payment_id=8: payment_amount 123456789.00 "
                                        r"does not fit fact_payment.payment_amount "
                                        r"\(numeric\(10, 2\)\)"):
        fact_rows(big, "payment")


def test_a_rule_error_without_row_ids_is_still_a_data_error():
    from totes.transform.columns import conform
    from totes.utils.star_schema import TABLES

    columns = {"payment_type_id": pa.array([1], pa.int32()),
               "payment_type_name": pa.array([None], pa.string()),
               "source_last_updated": pa.array([datetime(2024, 1, 1)], pa.timestamp("us"))}
    with pytest.raises(DataError, match="payment_type: payment_type_name is empty but "
                                        "dim_payment_type.payment_type_name is NOT NULL"):
        conform(columns, TABLES["dim_payment_type"], "payment_type", "no_such_id_column")
