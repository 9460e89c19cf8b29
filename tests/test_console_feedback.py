"""The console's thumbs go through the code of POST /v1/feedback, with the session's tenant and its CSRF token."""

from __future__ import annotations

import re
import uuid

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


def test_feedback_is_checked_like_the_api_and_needs_the_csrf_token(browser, db, migrated, private_redis):
    """Unknown answer ids are a 404 (as POST /v1/feedback), bad ratings a 422 naming the field, no token a 403."""
    from sluice.db import create_tenant

    tenant = f"fb-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    key = create_key(db, tenant).secret
    with ApiServer(migrated.model_copy(update={"broker_url": private_redis.url})) as api:
        page, csrf = _signed_in(browser, api.url, key)
        assert page.locator("#feedback").is_visible()
        post = lambda body, **headers: page.request.post(f"{api.url}/console/feedback", data=body, headers=headers)  # noqa: E731
        unknown = post({"answer_id": str(uuid.uuid4()), "rating": "up"}, **{"X-CSRF-Token": csrf})
        assert unknown.status == 404 and "answer" in unknown.json()["detail"]
        bad = post({"answer_id": "a1", "rating": "meh"}, **{"X-CSRF-Token": csrf})
        assert bad.status == 422 and "rating" in bad.json()["detail"]
        refused = post({"answer_id": "a1", "rating": "down"})
        assert refused.status == 403 and re.search("CSRF", refused.json()["detail"])
        page.context.close()
