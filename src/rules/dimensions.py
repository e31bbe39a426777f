"""Dimension rules. Each returns the rows to upsert, one per key, with the latest values and
their version (``source_last_updated``: the newest ``last_updated`` of the source rows a
dimension row derives from); grain and columns are those of
:data:`totes.contracts.star_schema.TABLES`. :data:`DIMENSION_RULES` says which source tables each
dimension is built from, so that transform runs them as a table, as it runs the facts.

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

from dataclasses import dataclass
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from totes.contracts.cdc import LSN
from totes.contracts.quarantine import Checked, Violations
from totes.contracts.star_schema import (REFERENCE_LAST_UPDATED, SOURCE_LAST_UPDATED, TABLES,
                                         VERSION)
from totes.rules.columns import conform, version_columns


def latest_per_key(rows: pa.Table, key: str, order: str = "last_updated") -> pa.Table:
    """One row per ``key``: the one with the greatest ``order`` and, among those, the
    greatest commit position (rows read from the change log; sorted by key)."""
    rows = rows.sort_by([(key, "ascending"), (order, "ascending")]
                        + ([(LSN, "ascending")] if LSN in rows.column_names else []))
    if rows.num_rows < 2:
        return rows
    keys = rows[key].combine_chunks()
    following = pa.concat_arrays([keys.slice(1), pa.nulls(1, keys.type)])
    return rows.filter(pc.fill_null(pc.not_equal(keys, following), True))


def _columns(rows: pa.Table, renames: Optional[dict[str, str]] = None) -> dict:
    """The columns of ``rows``, plus ``renames`` (new → old name), plus the version columns:
    the row's own ``last_updated`` (a delete's: the moment of the delete) and log position,
    whether it is deleted and, for rows joined to a reference row, the reference's
    ``last_updated``."""
    columns = {name: rows[name] for name in rows.column_names}
    columns.update({new: rows[old] for new, old in (renames or {}).items()})
    versions = version_columns(rows)
    columns[SOURCE_LAST_UPDATED] = versions.pop("last_updated").cast(VERSION[1])
    columns.update(versions)
    if _REFERENCE_VERSION in rows.column_names:
        columns[REFERENCE_LAST_UPDATED] = rows[_REFERENCE_VERSION].cast(VERSION[1])
    return columns


def _as_is(dimension: str, source: str, key: str, renames: Optional[dict] = None):
    """The rule of a dimension that is its source's latest rows, some columns renamed."""
    def rule(rows: pa.Table) -> Checked:
        latest = latest_per_key(rows, key)
        return conform(_columns(latest, renames), TABLES[dimension],
                       Violations(source, key, latest))
    rule.__doc__ = f"{dimension} ← the latest row per {key} of {source}."
    return rule


dim_design = _as_is("dim_design", "design", "design_id")
dim_location = _as_is("dim_location", "address", "address_id", {"location_id": "address_id"})
dim_payment_type = _as_is("dim_payment_type", "payment_type", "payment_type_id")
dim_transaction = _as_is("dim_transaction", "transaction", "transaction_id")


def currency_name(code: Optional[str]) -> Optional[str]:
    """The ISO 4217 name of ``code`` ('GBP' → 'Pound Sterling'), or None when ISO 4217 has
    no such code."""
    import pycountry

    found = pycountry.currencies.get(alpha_3=code.strip().upper()) if code else None
    return found.name if found is not None else None


def dim_currency(currency: pa.Table) -> Checked:
    """dim_currency ← the latest row per currency_id, with the code's ISO 4217 name; a code
    without one is an ``iso_4217`` violation (``currency row currency_id=9: currency_code
    'XYZ' has no ISO 4217 name``)."""
    rows = latest_per_key(currency, "currency_id")
    violations = Violations("currency", "currency_id", rows)
    names = pa.array([currency_name(code) for code in rows["currency_code"].to_pylist()],
                     pa.string())
    violations.add(pc.and_(pc.is_null(names), pc.is_valid(rows["currency_code"])),
                   "currency_code", "iso_4217", lambda v: f"{v!r} has no ISO 4217 name",
                   rows["currency_code"].combine_chunks())
    columns = _columns(rows)
    columns["currency_name"] = names
    return conform(columns, TABLES["dim_currency"], violations)


_REFERENCE_VERSION = "__reference_last_updated"
_REFERENCE_FOUND = "__reference_found"


def _join_reference(rows: pa.Table, reference: Optional[pa.Table], key: str, reference_key: str,
                    renames: dict[str, str], table: str, id_column: str,
                    reference_table: str) -> tuple[pa.Table, Violations]:
    """``rows`` left-joined to the columns ``renames`` (new → old) of ``reference``, plus the
    reference row's ``last_updated`` as ``__reference_last_updated``, and the violations of
    the joined rows so far: a row whose reference row is missing is a ``reference``
    violation (``staff row staff_id=3: department_id 9 has no department row``)."""
    if reference is None:
        reference = pa.table({**{old: pa.array([], rows[key].type if old == reference_key
                                               else pa.string()) for old in renames.values()},
                              reference_key: pa.array([], rows[key].type),
                              "last_updated": pa.array([], pa.timestamp("ms"))})
    picked = pa.table({new: reference[old] for new, old in renames.items()}
                      | {_REFERENCE_VERSION: reference["last_updated"],
                         _REFERENCE_FOUND: pa.repeat(True, reference.num_rows),
                         "__ref_key": reference[reference_key].cast(rows[key].type)})
    joined = rows.join(picked, keys=key, right_keys="__ref_key", join_type="left outer")
    violations = Violations(table, id_column, joined, rows.column_names)
    violations.add(pc.is_null(joined[_REFERENCE_FOUND]), key, "reference",
                   lambda v: f"{v} has no {reference_table} row", joined[key].combine_chunks())
    return joined, violations


def _affected(rows: pa.Table, id_column: str, changed_ids, key: str, changed_reference_ids):
    """Rows of ``rows`` whose own id changed or whose reference ``key`` changed."""
    mask = pc.is_in(rows[id_column], value_set=changed_ids)
    if changed_reference_ids is not None and len(changed_reference_ids):
        mask = pc.or_(mask, pc.is_in(rows[key], value_set=changed_reference_ids))
    return rows.filter(mask)


def dim_counterparty(counterparty: Optional[pa.Table], address: Optional[pa.Table],
                     changed_counterparty_ids, changed_address_ids) -> Optional[Checked]:
    """Rows for the counterparties that changed and those whose legal address changed;
    ``counterparty`` and ``address`` are the current state (latest row per key). Version:
    the newer of the counterparty's and its address's ``last_updated``."""
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
    joined, violations = _join_reference(rows, address, "legal_address_id", "address_id",
                                         renames, "counterparty", "counterparty_id", "address")
    return conform(_columns(joined), TABLES["dim_counterparty"], violations)


def dim_staff(staff: Optional[pa.Table], department: Optional[pa.Table], changed_staff_ids,
              changed_department_ids) -> Optional[Checked]:
    """Rows for the staff who changed and those whose department changed; ``staff`` and
    ``department`` are the current state (latest row per key). Version: the newer of the
    staff row's and its department's ``last_updated``."""
    if staff is None:
        return None
    rows = _affected(staff, "staff_id", changed_staff_ids, "department_id",
                     changed_department_ids)
    joined, violations = _join_reference(
        rows, department, "department_id", "department_id",
        {"department_name": "department_name", "location": "location"}, "staff", "staff_id",
        "department")
    return conform(_columns(joined), TABLES["dim_staff"], violations)


def dim_date(dates: pa.Array) -> pa.Table:
    """One row per distinct date in ``dates`` (date32), sorted. Its values follow from the
    date, so no row can break a rule."""
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
    return conform(columns, TABLES["dim_date"], Violations("dim_date", "date_id",
                                                           pa.table({"date_id": dates}))).rows


# ---- which dimension is built from what -----------------------------------------------------
@dataclass(frozen=True)
class BatchInputs:
    """What one transform batch gives the dimension rules.

    ``new``: source table → every row version of it in the batch (all its new lake files).
    ``state``: reference table → its latest row per key, this batch included (None when the
    table has never had a row).
    """

    new: dict[str, pa.Table]
    state: dict[str, Optional[pa.Table]]

    def changed_ids(self, table: str, key: str) -> pa.Array:
        """The keys of ``table`` that changed in this batch (empty when none did)."""
        return self.new[table][key] if table in self.new else pa.array([], pa.int32())


@dataclass(frozen=True)
class DimensionRule:
    """Dimension ``table`` is rebuilt, for the keys that changed, when any of ``sources``
    has new rows in a batch; ``build`` returns its rows and the row versions it held back
    (or None). Held row versions are those of ``sources[0]``."""

    table: str
    sources: tuple[str, ...]
    build: Callable[[BatchInputs], Optional[Checked]]


#: Every dimension but dim_date (which follows the facts' dates), in the order written.
DIMENSION_RULES: tuple[DimensionRule, ...] = (
    DimensionRule("dim_design", ("design",), lambda b: dim_design(b.new["design"])),
    DimensionRule("dim_location", ("address",), lambda b: dim_location(b.new["address"])),
    DimensionRule("dim_currency", ("currency",), lambda b: dim_currency(b.new["currency"])),
    DimensionRule("dim_payment_type", ("payment_type",),
                  lambda b: dim_payment_type(b.new["payment_type"])),
    DimensionRule("dim_transaction", ("transaction",),
                  lambda b: dim_transaction(b.new["transaction"])),
    DimensionRule("dim_counterparty", ("counterparty", "address"), lambda b: dim_counterparty(
        b.state["counterparty"], b.state["address"],
        b.changed_ids("counterparty", "counterparty_id"), b.changed_ids("address", "address_id"))),
    DimensionRule("dim_staff", ("staff", "department"), lambda b: dim_staff(
        b.state["staff"], b.state["department"], b.changed_ids("staff", "staff_id"),
        b.changed_ids("department", "department_id"))),
)


def dimension_rows(inputs: BatchInputs):
    """``(rule, checked)`` for every rule one of whose sources has new rows in the batch."""
    for rule in DIMENSION_RULES:
        if any(source in inputs.new for source in rule.sources):
            yield rule, rule.build(inputs)
