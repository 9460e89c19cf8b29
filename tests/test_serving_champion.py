"""Serving answers with the promoted champion, and follows a promotion or rollback without restart."""

from __future__ import annotations

import pytest

from serving.config_source import active_config
from sluice.champion import record_promotion, store_config
from sluice.config import parse_config

pytestmark = pytest.mark.usefixtures("no_champion_left")


def test_active_config_follows_the_champion(db, migrated):
    default = active_config(migrated, db)
    challenger = parse_config({"chunker": {"kind": "recursive", "chunk_size": 600, "chunk_overlap": 60}})
    assert challenger.config_id != default.config_id
    store_config(db, challenger)
    record_promotion(
        db, challenger.config_id, run_id=None, model_version=None, evaluated_on="t", reason="test promotion"
    )
    assert active_config(migrated, db).config_id == challenger.config_id
    off = migrated.model_copy(update={"serve_champion": False})
    assert active_config(off, db).config_id == default.config_id
