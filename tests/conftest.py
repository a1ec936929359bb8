"""Fixtures shared by several test modules."""

import tempfile

import pytest


@pytest.fixture
def tmp_tempdir(tmp_path, monkeypatch):
    """Folders the code under test makes with ``tempfile`` land in ``tmp_path`` (pruned by pytest)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path
