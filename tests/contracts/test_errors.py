"""A DataError carries what it is about; its message is built once, from those fields."""
import pickle

from totes.contracts.errors import DataError, DatabaseUnavailable


def test_a_data_error_names_table_row_and_column_and_keeps_them():
    error = DataError("sales_order", "'20/11/2024' is not a YYYY-MM-DD date",
                      key_column="sales_order_id", row_id=11190,
                      column="agreed_delivery_date", value="20/11/2024")
    assert str(error) == ("sales_order row sales_order_id=11190: agreed_delivery_date "
                          "'20/11/2024' is not a YYYY-MM-DD date")
    assert error.to_dict() == {
        "type": "DataError", "message": str(error), "retryable": False,
        "table": "sales_order", "key_column": "sales_order_id", "row_id": 11190,
        "column": "agreed_delivery_date", "value": "20/11/2024",
        "problem": "'20/11/2024' is not a YYYY-MM-DD date"}
    copy = pickle.loads(pickle.dumps(error))  # crosses threads and processes intact
    assert (str(copy), copy.row_id, copy.column) == (str(error), 11190, "agreed_delivery_date")
    assert str(DataError("payment", "has no rows", column="paid")) == "payment: paid has no rows"


def test_the_type_says_whether_a_retry_can_help():
    assert DatabaseUnavailable("x").to_dict()["retryable"] is True
    assert DataError("t", "bad").to_dict()["retryable"] is False


def test_every_transient_error_is_retried_by_the_state_machine():
    """Step Functions' ErrorEquals matches error names, not subclasses: every TransientError
    class, walked from the Python classes, must be named in retry_transient.json."""
    import json
    from pathlib import Path

    from totes.contracts import errors

    def subclasses(kind: type) -> set[str]:
        return {kind.__name__}.union(*(subclasses(k) for k in kind.__subclasses__()))

    retry = json.loads((Path(__file__).parents[2] / "main-terraform" /
                        "retry_transient.json").read_text())
    retried = {name for rule in retry for name in rule["ErrorEquals"]}
    transient = subclasses(errors.TransientError)
    assert {"TransientError", "DatabaseUnavailable", "StorageUnavailable",
            "LeaseLost"} <= transient
    assert transient - retried == set(), "transient errors the state machine never retries"
    terminal = subclasses(errors.TerminalError)
    assert terminal & retried == set(), "terminal errors the state machine would retry"
