"""The console's thumbs reach POST /v1/feedback in process, with the session's tenant, or say the route is absent."""

from __future__ import annotations

import re
import uuid

from fastapi import Request

from serving.api.deps import Tenant
from serving.auth import create_key
from tests import console_support as ui
from tests.serving_support import ApiServer

browser = ui.browser  # the module's chromium (a fixture)


def _signed_in(browser, url: str, key: str):
    """A signed-in page and its CSRF token."""
    page = browser.new_context().new_page()
    ui.sign_in(page, url, key)
    page.wait_for_url(f"{url}/console/ask")
    return page, page.locator('meta[name="csrf-token"]').get_attribute("content")


def test_feedback_goes_to_the_route_with_the_sessions_tenant(browser, db, migrated, private_redis):
    from sluice.db import create_tenant

    tenant = f"fb-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    key = create_key(db, tenant).secret
    with ApiServer(migrated.model_copy(update={"broker_url": private_redis.url})) as api:
        page, csrf = _signed_in(browser, api.url, key)
        absent = page.request.post(
            f"{api.url}/console/feedback", data={"answer_id": "a"}, headers={"X-CSRF-Token": csrf}
        )
        assert absent.status == 404 and "no feedback endpoint" in absent.json()["detail"]

        @api.app.post("/v1/feedback", status_code=201)
        async def feedback(request: Request, tenant: Tenant) -> dict:  # stands in for serving/api/feedback.py
            return {"tenant": tenant, "body": await request.json()}

        page.goto(f"{api.url}/console/ask")
        assert page.locator("#feedback").is_visible()  # shown once the route exists
        body = {"answer_id": "a1", "rating": "down", "correction": "45 days"}
        sent = page.request.post(f"{api.url}/console/feedback", data=body, headers={"X-CSRF-Token": csrf})
        assert sent.status == 201 and sent.json() == {"tenant": tenant, "body": body}
        refused = page.request.post(f"{api.url}/console/feedback", data=body)
        assert refused.status == 403 and re.search("CSRF", refused.json()["detail"])
        page.context.close()
