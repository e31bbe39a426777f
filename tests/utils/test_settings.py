"""The settings object: every change of a variable it reads is seen at the next call, although
the Settings are built again only when one changed."""
import pytest

from totes.contracts.errors import ConfigError
from totes.utils import settings


def test_a_changed_variable_is_seen_at_once_and_an_unchanged_one_builds_nothing(monkeypatch):
    monkeypatch.setenv("TOTES_LEASE_SECONDS", "30")
    first = settings.current()
    assert first.lease_seconds == 30
    assert settings.current() is first  # nothing changed: the same frozen Settings

    monkeypatch.setenv("TOTES_LEASE_SECONDS", "45")
    assert settings.current().lease_seconds == 45
    monkeypatch.setenv("totes_lease_seconds", "60")  # matched in any case, as pydantic does
    monkeypatch.delenv("TOTES_LEASE_SECONDS")
    assert settings.current().lease_seconds == 60
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")  # an alias counts too
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert settings.current().aws_region == "eu-west-3"
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    before = settings.current()
    assert settings.current() is before

    monkeypatch.setenv("totes_lease_seconds", "soon")
    with pytest.raises(ConfigError, match="TOTES_LEASE_SECONDS='soon': input should be"):
        settings.current()
    with pytest.raises(ConfigError):  # still invalid: never a stale value
        settings.current()
    monkeypatch.delenv("totes_lease_seconds")
    assert settings.current().lease_seconds == settings.Settings.model_fields[
        "lease_seconds"].default


def test_overridden_values_win_over_the_cached_environment(monkeypatch):
    monkeypatch.setenv("TOTES_BOOKKEEPING_SCHEMA", "books")
    assert settings.bookkeeping() == '"books"'
    with settings.overridden(bookkeeping_schema="scratch"):
        assert settings.bookkeeping() == '"scratch"'
    assert settings.bookkeeping() == '"books"'
