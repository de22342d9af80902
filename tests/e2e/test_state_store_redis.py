"""The state store contract (tests/storecontract.py) on a real redis-server."""

from __future__ import annotations

from pathlib import Path

import pytest
from storecontract import (  # noqa: F401 - the contract's tests, collected here
    Backend,
    test_closed_store_refuses_calls_and_reopen_keeps_everything,
    test_concurrent_calls_all_land_with_unique_increasing_ids,
    test_events_have_increasing_ids_and_filter_and_prune,
    test_meta,
    test_pins_upsert_delete_load_in_batches_of_10k,
    test_records_handed_out_are_independent_copies,
    test_revisions_say_who_runs_their_workers,
    test_revisions_upsert_get_and_list_in_creation_order,
    test_values_json_cannot_hold_are_refused_and_nothing_is_stored,
)


@pytest.fixture(params=["redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Backend:
    return Backend(request.param, tmp_path, redis_url)
