"""A database URL's password never reaches an error message, a report or its JSON."""

from __future__ import annotations

import pytest

from slotune.errors import StoreError
from slotune.store import open_store, shown_url


def test_shown_url_masks_the_password_of_any_url() -> None:
    assert shown_url("postgresql+psycopg://slotune:s3cret@db:5432/slotune") == \
        "postgresql+psycopg://slotune:***@db:5432/slotune"
    # Not a URL SQLAlchemy reads (a port that is no number): masked all the same.
    assert "s3cret" not in shown_url("postgresql://slotune:s3cret@db:notaport/x")
    assert shown_url("sqlite:////tmp/s.db") == "sqlite:////tmp/s.db"


@pytest.mark.parametrize("url", ["postgresql://slotune:s3cret@db:notaport/x", "nosuchdialect://u:s3cret@h/x"])
def test_a_store_that_cannot_open_names_the_url_without_its_password(url: str) -> None:
    with pytest.raises(StoreError) as err:
        open_store(url)
    assert "s3cret" not in str(err.value) and "***" in str(err.value), str(err.value)
