"""Ids made by the database layer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from shared.db import new_id


def test_ids_follow_time_back_past_1970():
    # An archive import goes back further than the id's clock: such stories still get ids,
    # ordered before everything published since.
    ids = [new_id(datetime(year, 6, 1, tzinfo=UTC)) for year in (1955, 2005)] + [new_id()]
    assert ids == sorted(ids)
    assert {uuid.UUID(i).version for i in ids} == {7}
