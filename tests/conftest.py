"""Shared fixtures: shipped profiles, an isolated ADVISOR_HOME so tests never touch the user's, and a
loader for the scripts under bench/ (which are not a package)."""

import importlib.util
import sys
from pathlib import Path

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


def load_bench(name: str):
    """bench/<name>.py as a module, registered in sys.modules (its dataclasses look it up there)."""
    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
