"""The broker settings: a malformed one stops start-up with a message naming it."""

from __future__ import annotations

import pytest

from headless_ehr.config import Settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EHR_NATS_URL", "127.0.0.1:4222"),
        ("EHR_NATS_URL", "http://127.0.0.1:4222"),
        ("EHR_NATS_URL", "nats://127.0.0.1:4222,nats://"),
        ("EHR_NATS_URL", "nats://127.0.0.1:port"),
        ("EHR_NATS_STREAM", "EHR.events"),
        ("EHR_NATS_STREAM", "EHR*"),
        ("EHR_NATS_SUBJECT_PREFIX", "ehr.>"),
        ("EHR_NATS_SUBJECT_PREFIX", "ehr..x"),
    ],
)
def test_a_malformed_broker_setting_stops_start_up(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        Settings.from_env()


def test_the_broker_settings_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("EHR_NATS_URL", "nats://a:4222,tls://b:4222")
    monkeypatch.setenv("EHR_NATS_STREAM", "CLINIC_EVENTS")
    monkeypatch.setenv("EHR_NATS_SUBJECT_PREFIX", "clinic.ehr")
    settings = Settings.from_env()
    assert (settings.nats_url, settings.nats_stream, settings.nats_subject_prefix) == (
        "nats://a:4222,tls://b:4222",
        "CLINIC_EVENTS",
        "clinic.ehr",
    )


def test_without_nats_url_nothing_is_published(monkeypatch):
    monkeypatch.delenv("EHR_NATS_URL", raising=False)
    settings = Settings.from_env()
    assert settings.nats_url is None and (settings.nats_stream, settings.nats_subject_prefix) == ("EHR", "ehr")
