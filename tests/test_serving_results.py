"""Result waiting: pushed by the Redis backend's PUBLISH, with a read that catches results stored earlier."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from celery import states

from serving.celery_app import create_celery
from serving.results import ResultWaiter
from tests.serving_support import TEST_REDIS


@pytest.fixture()
def app(migrated):
    return create_celery(migrated.model_copy(update={"broker_url": TEST_REDIS, "result_backend": None}))


@pytest.fixture()
def waiter(app):
    w = ResultWaiter(app)
    yield w
    w.close()


def _until(predicate, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_result_stored_while_waiting_is_pushed(app, waiter):
    job = str(uuid.uuid4())
    with waiter.expect(job):
        _until(lambda: waiter.listening(job))
        store = threading.Thread(
            target=lambda: [
                app.backend.store_result(job, None, states.STARTED),  # not final: must not wake the waiter
                app.backend.store_result(job, {"answer": 42}, states.SUCCESS),
            ]
        )
        store.start()
        meta = waiter.wait(job, timeout_s=30)
        store.join()
        # Subscribed before the PUBLISH, so it is pushed (even if the waiter's own read won the race).
        _until(lambda: waiter.delivered == 1)
    assert meta["status"] == states.SUCCESS and meta["result"] == {"answer": 42}


def test_a_result_stored_before_waiting_is_read(app, waiter):
    job = str(uuid.uuid4())
    app.backend.store_result(job, {"answer": 7}, states.SUCCESS)  # published to nobody
    with waiter.expect(job):
        meta = waiter.wait(job, timeout_s=30)
    assert meta["result"] == {"answer": 7} and waiter.delivered == 0


def test_failure_is_final_and_nothing_is_none(app, waiter):
    failed, missing = str(uuid.uuid4()), str(uuid.uuid4())
    app.backend.store_result(failed, ValueError("bad"), states.FAILURE)
    with waiter.expect(failed):
        assert waiter.wait(failed, timeout_s=30)["status"] == states.FAILURE
    with waiter.expect(missing):
        assert waiter.wait(missing, timeout_s=0.3) is None


def test_streaming_states_are_pushed_to_a_follower_in_order(app, waiter):
    """What an SSE stream sees: the state before it listened (read), then each published state (pushed)."""
    job = str(uuid.uuid4())
    app.backend.store_result(job, {"tokens": ["Bees"]}, "STREAMING")  # before the stream listens
    seen = []
    with waiter.expect(job):
        _until(lambda: waiter.listening(job))

        def publish():
            for tokens in (["Bees", " dance"], ["Bees", " dance", " to"]):
                time.sleep(0.05)
                app.backend.store_result(job, {"tokens": tokens}, "STREAMING")
            time.sleep(0.05)
            app.backend.store_result(job, {"answer": "Bees dance to tell"}, states.SUCCESS)

        worker = threading.Thread(target=publish)
        worker.start()
        for meta in waiter.updates(job, time.monotonic() + 30):
            seen.append((meta["status"], meta["result"]))
            if meta["status"] == states.SUCCESS:
                break
        worker.join()
    assert seen[0] == ("STREAMING", {"tokens": ["Bees"]})
    assert seen[-1] == (states.SUCCESS, {"answer": "Bees dance to tell"})
    streamed = [r["tokens"] for s, r in seen if s == "STREAMING"]
    assert streamed == sorted(streamed, key=len) and streamed[-1] == ["Bees", " dance", " to"]
    assert waiter.pushed_updates >= 3, "the states after the first read arrive by push, not by polling"
