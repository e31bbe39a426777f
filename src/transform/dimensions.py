"""Dimension rules (SCHEMAS.md §3). Each returns the rows to upsert, one per key, with the
latest values; grain and columns are those of :data:`totes.utils.star_schema.TABLES`.

* dim_design ← design; dim_location ← address (address_id → location_id);
* dim_counterparty ← counterparty joined to address on legal_address_id, address columns
  prefixed ``counterparty_legal_`` (phone → counterparty_legal_phone_number);
* dim_staff ← staff joined to department on department_id (department_name, location);
* dim_currency ← currency, with the ISO 4217 name of the code from ``pycountry`` (ISO 4217 data
  maintained by Debian's iso-codes);
* dim_payment_type ← payment_type; dim_transaction ← transaction (nullable ids stay integers);
* dim_date ← every date a fact refers to: ISO day_of_week (Monday = 1), English day and month
  names, quarter 1–4.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from totes.transform.columns import conform
from totes.utils.errors import DataError
from totes.utils.star_schema import TABLES


def latest_per_key(rows: pa.Table, key: str, order: str = "last_updated") -> pa.Table:
    """One row per ``key``: the one with the greatest ``order`` (sorted by key)."""
    rows = rows.sort_by([(key, "ascending"), (order, "ascending")])
    if rows.num_rows < 2:
        return rows
    keys = rows[key].combine_chunks()
    following = pa.concat_arrays([keys.slice(1), pa.nulls(1, keys.type)])
    return rows.filter(pc.fill_null(pc.not_equal(keys, following), True))


def _as_dict(rows: pa.Table, renames: dict[str, str] = {}) -> dict:
    columns = {name: rows[name] for name in rows.column_names}
    columns.update({new: rows[old] for new, old in renames.items()})
    return columns


def dim_design(design: pa.Table) -> pa.Table:
    return conform(_as_dict(latest_per_key(design, "design_id")), TABLES["dim_design"],
                   "design", "design_id")


def dim_location(address: pa.Table) -> pa.Table:
    rows = latest_per_key(address, "address_id")
    return conform(_as_dict(rows, {"location_id": "address_id"}), TABLES["dim_location"],
                   "address", "address_id")


def dim_payment_type(payment_type: pa.Table) -> pa.Table:
    return conform(_as_dict(latest_per_key(payment_type, "payment_type_id")),
                   TABLES["dim_payment_type"], "payment_type", "payment_type_id")


def dim_transaction(transaction: pa.Table) -> pa.Table:
    return conform(_as_dict(latest_per_key(transaction, "transaction_id")),
                   TABLES["dim_transaction"], "transaction", "transaction_id")


def currency_name(code: str, currency_id: int) -> str:
    """The ISO 4217 name of ``code`` ('GBP' → 'Pound Sterling').

    Raises:
        DataError: the code is not in ISO 4217 (names the code and the currency_id).
    """
    import pycountry

    found = pycountry.currencies.get(alpha_3=code.strip().upper()) if code else None
    if found is None:
        raise DataError(f"currency row currency_id={currency_id}: currency_code {code!r} has "
                        "no ISO 4217 name")
    return found.name


def dim_currency(currency: pa.Table) -> pa.Table:
    rows = latest_per_key(currency, "currency_id")
    names = [currency_name(code, cid) for code, cid in
             zip(rows["currency_code"].to_pylist(), rows["currency_id"].to_pylist())]
    columns = _as_dict(rows)
    columns["currency_name"] = pa.array(names, pa.string())
    return conform(columns, TABLES["dim_currency"], "currency", "currency_id")


def _join_reference(rows: pa.Table, reference: pa.Table, key: str, reference_key: str,
                    renames: dict[str, str], table: str, id_column: str,
                    reference_table: str) -> pa.Table:
    """``rows`` left-joined to the columns ``renames`` (new → old) of ``reference``; every row
    must find its reference row."""
    known = reference[reference_key] if reference is not None else pa.array([], pa.int32())
    missing = pc.invert(pc.is_in(rows[key], value_set=known.cast(rows[key].type)))
    if pc.any(missing).as_py():
        i = pc.index(missing, True).as_py()
        raise DataError(f"{table} row {id_column}={rows[id_column][i].as_py()}: {key} "
                        f"{rows[key][i].as_py()} has no {reference_table} row")
    picked = pa.table({new: reference[old] for new, old in renames.items()}
                      | {"__ref_key": reference[reference_key]})
    return rows.join(picked, keys=key, right_keys="__ref_key", join_type="left outer")


def _affected(rows: pa.Table, id_column: str, changed_ids, key: str, changed_reference_ids):
    """Rows of ``rows`` whose own id changed or whose reference ``key`` changed."""
    mask = pc.is_in(rows[id_column], value_set=changed_ids)
    if changed_reference_ids is not None and len(changed_reference_ids):
        mask = pc.or_(mask, pc.is_in(rows[key], value_set=changed_reference_ids))
    return rows.filter(mask)


def dim_counterparty(counterparty: pa.Table, address: pa.Table, changed_counterparty_ids,
                     changed_address_ids) -> pa.Table:
    """Rows for the counterparties that changed and those whose legal address changed;
    ``counterparty`` and ``address`` are the current state (latest row per key)."""
    if counterparty is None:
        return None
    rows = _affected(counterparty, "counterparty_id", changed_counterparty_ids,
                     "legal_address_id", changed_address_ids)
    renames = {"counterparty_legal_address_line_1": "address_line_1",
               "counterparty_legal_address_line_2": "address_line_2",
               "counterparty_legal_district": "district",
               "counterparty_legal_city": "city",
               "counterparty_legal_postal_code": "postal_code",
               "counterparty_legal_country": "country",
               "counterparty_legal_phone_number": "phone"}
    joined = _join_reference(rows, address, "legal_address_id", "address_id", renames,
                             "counterparty", "counterparty_id", "address")
    return conform(_as_dict(joined), TABLES["dim_counterparty"], "counterparty",
                   "counterparty_id")


def dim_staff(staff: pa.Table, department: pa.Table, changed_staff_ids,
              changed_department_ids) -> pa.Table:
    """Rows for the staff who changed and those whose department changed; ``staff`` and
    ``department`` are the current state (latest row per key)."""
    if staff is None:
        return None
    rows = _affected(staff, "staff_id", changed_staff_ids, "department_id",
                     changed_department_ids)
    joined = _join_reference(rows, department, "department_id", "department_id",
                             {"department_name": "department_name", "location": "location"},
                             "staff", "staff_id", "department")
    return conform(_as_dict(joined), TABLES["dim_staff"], "staff", "staff_id")


def dim_date(dates: pa.Array) -> pa.Table:
    """One row per distinct date in ``dates`` (date32), sorted."""
    dates = pc.unique(dates.cast(pa.date32()).drop_null()).sort() if len(dates) else \
        pa.array([], pa.date32())
    moments = dates.cast(pa.timestamp("s"))
    columns = {
        "date_id": dates, "year": pc.year(moments), "month": pc.month(moments),
        "day": pc.day(moments),
        "day_of_week": pc.day_of_week(moments, count_from_zero=False, week_start=1),
        "day_name": pc.strftime(moments, format="%A", locale="C"),
        "month_name": pc.strftime(moments, format="%B", locale="C"),
        "quarter": pc.quarter(moments),
    }
    return conform(columns, TABLES["dim_date"], "dim_date", "date_id")
