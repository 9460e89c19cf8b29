"""SLUICE_FILTER_COLUMNS declarations (sluice/filter_columns.py): keys Sluice sets itself are not promoted."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluice.errors import ConfigError
from sluice.filter_columns import check_declared
from sluice.settings import Settings


@pytest.mark.parametrize("key", ["source", "filename", "filetype", "mojibake_repaired"])
def test_a_key_sluice_sets_itself_is_refused_by_name(key):
    with pytest.raises(ConfigError, match=rf"key '{key}' is set by Sluice itself.*: remove it from SLUICE_FILTER"):
        check_declared({"year": "integer", key: "text"})
    with pytest.raises(ValidationError, match=rf"key '{key}' is set by Sluice itself"):
        Settings(filter_columns={key: "boolean"})


def test_user_keys_are_accepted():
    assert Settings(filter_columns={"year": "integer", "sources": "text"}).filter_columns == {
        "year": "integer",
        "sources": "text",
    }
