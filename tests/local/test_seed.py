"""Seeding the real snapshot as of a time, and advancing it."""
from datetime import datetime

import pyarrow.compute as pc
import pytest

from support import query, snapshot
from totes.contracts.errors import ConfigError
from totes.local.seed import seed

AS_OF = datetime(2024, 11, 1)
LATER = datetime(2024, 11, 8)


def expected_at(moment):
    payments = snapshot("payment")
    created = payments.filter(pc.less_equal(payments["created_at"], moment))
    paid = created.filter(pc.and_(created["paid"],
                                  pc.less_equal(created["last_updated"], moment)))
    return created.num_rows, paid.num_rows


def test_as_of_holds_the_rows_created_by_then_with_later_payments_unpaid(empty_source):
    seed(empty_source, AS_OF)
    rows, paid = expected_at(AS_OF)
    (count, paid_count, reverted), = query(
        empty_source, "SELECT count(*), count(*) FILTER (WHERE paid), "
        "count(*) FILTER (WHERE NOT paid AND last_updated = created_at) FROM payment")
    assert (count, paid_count) == (rows, paid)
    assert reverted == rows - paid
    (newest,), = query(empty_source, "SELECT max(created_at) FROM sales_order")
    assert newest <= AS_OF
    (price_type,), = query(empty_source, "SELECT pg_typeof(unit_price)::text FROM sales_order "
                                         "LIMIT 1")
    assert price_type == "numeric"


def test_advance_applies_the_inserts_and_payment_updates_in_between(empty_source):
    seed(empty_source, AS_OF)
    counts = seed(empty_source, LATER, advance=True)
    rows_then, paid_then = expected_at(AS_OF)
    rows_now, paid_now = expected_at(LATER)
    assert counts["payment"]["inserted"] == rows_now - rows_then
    (paid,), = query(empty_source, "SELECT count(*) FILTER (WHERE paid) FROM payment")
    assert paid == paid_now
    # Payments created before AS_OF and paid in between were updated, not duplicated.
    assert counts["payment"]["updated"] > 0
    with pytest.raises(ConfigError, match="only moves forward"):
        seed(empty_source, AS_OF, advance=True)


def test_the_serial_sequences_continue_after_the_snapshot(seeded_source):
    (new_id,), = query(seeded_source, "INSERT INTO currency (currency_code, last_updated) "
                                      "VALUES ('JPY', now()) RETURNING currency_id")
    assert new_id == snapshot("currency").num_rows + 1
