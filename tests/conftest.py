"""Shared fixtures: shipped profiles, and an isolated ADVISOR_HOME so tests never touch the user's."""

import pytest

from advisor.catalog import load_hardware, load_model


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "advisor-home"))


@pytest.fixture
def h100():
    return load_hardware("h100-pcie5")


@pytest.fixture
def opt67():
    return load_model("opt-6.7b")
