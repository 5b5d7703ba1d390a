"""Settings come from the environment, read again at every call (cheaply: one cache lookup)."""

from __future__ import annotations

import pytest

from functions.config import ENV_NAMES, Settings


def test_a_changed_variable_is_seen_by_the_next_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_ATTEMPTS", "5")
    first = Settings.from_env()
    assert first.max_attempts == 5 and Settings.from_env() is first
    monkeypatch.setenv("MAX_ATTEMPTS", "6")
    assert Settings.from_env().max_attempts == 6
    monkeypatch.setenv("MAX_ATTEMPTS", "six")
    with pytest.raises(ValueError, match="MAX_ATTEMPTS"):
        Settings.from_env()


def test_every_variable_is_part_of_the_cache_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("K_SERVICE", raising=False)
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("FIRESTORE_MIRROR", raising=False)
    assert not Settings.from_env().firestore_mirror
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:8080")  # read only for the mirror's default
    assert Settings.from_env().firestore_mirror
    assert "FIRESTORE_EMULATOR_HOST" in ENV_NAMES and "GOOGLE_CLOUD_PROJECT" in ENV_NAMES
