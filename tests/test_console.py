"""The web console in a real browser (Debian's chromium, Playwright) against `sluice serve`, a worker and Postgres."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from serving.auth import create_key
from tests import console_support as ui
from tests.conftest import SAMPLE
from tests.serving_support import wait_job

browser = ui.browser  # the module's chromium (a fixture)
QUESTION = "How many days do I have to return an unridden bike?"
MLFLOW_UI = "http://127.0.0.1:5000"
UPLOAD = "# Console upload\n\nThe lighthouse keeper logs every passing ship in a green ledger.\n"


@pytest.fixture(scope="module")
def console_settings(stack_settings, tmp_path_factory):
    return stack_settings("console-test", ingest_root=tmp_path_factory.mktemp("ingest-root"), mlflow_ui_url=MLFLOW_UI)


@pytest.fixture(scope="module")
def server(console_settings, start_stack):
    """`sluice serve` and `sluice worker` as processes of their own: (base URL, API log)."""
    stack = start_stack(console_settings, api_process=True)
    return stack.url, stack.api_log


@pytest.fixture(scope="module")
def keys(db, server, console_settings):
    """Tenant A holds the sample corpus (ingested through the API); tenant B nothing."""
    from sluice.db import create_tenant

    out, tenants = {}, {}
    for name in ("a", "b"):
        tenants[name] = f"con{name}-{uuid.uuid4().hex[:8]}"
        create_tenant(db, tenants[name])
        out[name] = create_key(db, tenants[name]).secret
    (console_settings.ingest_root / tenants["a"]).symlink_to(SAMPLE, target_is_directory=True)
    with httpx.Client(base_url=server[0], headers={"Authorization": f"Bearer {out['a']}"}, timeout=60) as client:
        job = client.post("/v1/jobs", json={"kind": "ingest", "source": "corpus"})
        assert wait_job(client, job.json()["job_id"], timeout=300)["status"] == "succeeded"
    return {**out, "tenant_a": tenants["a"]}


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def test_docs_and_redoc_load_nothing_from_outside(page, server):
    url = server[0]
    seen = ui.Recorder(page)
    page.goto(f"{url}/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    assert page.locator(".opblock").count() >= 4  # the API's operations rendered: the JS loaded
    page.goto(f"{url}/redoc")
    page.wait_for_selector("h1", timeout=30_000)
    assert "Sluice" in page.locator("h1").first.inner_text()
    assert seen.outside(url) == []
    assert any(u.endswith("/static/docs/swagger-ui-bundle.js") for u in seen.urls)


def test_wrong_key_is_refused(page, server, keys):
    url = server[0]
    ui.sign_in(page, url, "sk_000000000000_not-a-real-key")
    assert page.get_by_role("alert").inner_text().startswith("unknown or revoked API key")
    ui.shot(page, "signin")
    page.goto(f"{url}/console/documents")
    assert page.url.endswith("/console/signin")  # still signed out


def test_ask_streams_an_answer_with_a_highlighted_citation(page, server, keys):
    url, log = server
    seen = ui.Recorder(page)
    ui.sign_in(page, url, keys["a"])
    page.wait_for_url(f"{url}/console/ask")
    cookie = next(c for c in page.context.cookies() if c["name"] == "sluice_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and keys["a"] not in cookie["value"]
    ui.check_accessible(page)
    page.get_by_label("Question").fill(QUESTION)
    page.get_by_role("button", name="Ask", exact=True).click()
    page.wait_for_selector("#citations li a", timeout=60_000)
    assert "45 days" in page.locator("#answer").inner_text()
    assert re.search(r"first token after \d+ ms", page.locator("#timing").inner_text())
    ui.check_feedback(page, url)
    ui.shot(page, "ask")
    page.locator("#citations li a").first.click()
    cited = page.locator("mark#cited").inner_text()
    assert cited and cited.strip() in page.locator("pre.doc").inner_text()
    assert page.locator("h1").inner_text() == "returns-policy.md"
    ui.shot(page, "source")
    assert seen.outside(url) == []
    assert keys["a"] not in log.read_text() and not any(keys["a"] in u for u in seen.urls)  # not logged, no URL


def test_upload_is_listed_after_its_job_and_other_tenants_see_none_of_it(browser, page, server, keys):
    url = server[0]
    seen = ui.Recorder(page)
    ui.sign_in(page, url, keys["a"])
    page.goto(f"{url}/console/documents")
    ui.check_accessible(page)
    transfer = page.evaluate_handle(
        """(text) => { const t = new DataTransfer(); t.items.add(new File([text], 'lighthouse.md'));
                      t.items.add(new File(['%PDF-1.7 not really'], 'broken.pdf')); return t; }""",
        UPLOAD,
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})  # drag and drop, as a user would
    page.wait_for_selector("table a:has-text('lighthouse.md')", timeout=120_000)  # the page reloads on success
    assert page.locator("text=returns-policy.md").count() >= 1
    assert re.search(r"succeeded: .*1 ingested.*1 failed", page.locator("#upload-status").inner_text())
    error = page.locator("#errors-h + table tbody tr").first.inner_text()
    assert "broken.pdf" in error and "parse" in error and "upload it again" in error  # the reason and what to do
    ui.shot(page, "documents")
    assert seen.outside(url) == []
    other = browser.new_context().new_page()
    ui.sign_in(other, url, keys["b"])
    other.goto(f"{url}/console/documents")
    assert "lighthouse.md" not in other.content() and "returns-policy.md" not in other.content()
    document = page.locator("table a:has-text('lighthouse.md')").get_attribute("href")
    other.goto(f"{url}{document}")
    assert other.locator("h1").inner_text() == "No such document"
    other.context.close()


def test_forms_without_the_csrf_token_are_refused(page, server, keys):
    url = server[0]
    ui.sign_in(page, url, keys["a"])
    page.wait_for_url(f"{url}/console/ask")
    assert page.request.post(f"{url}/console/signout", form={"x": "1"}).status == 403
    assert page.request.post(f"{url}/console/ask/stream", data={"question": "hi"}).status == 403
    assert page.request.post(f"{url}/console/upload", data={"files": []}).status == 403
    assert page.request.post(f"{url}/console/signin", form={"key": keys["a"]}).status == 403
    page.goto(f"{url}/console/documents")
    assert page.url.endswith("/console/documents")  # the refused sign-out left the session alone
    page.get_by_role("button", name="Sign out").click()
    page.goto(f"{url}/console/documents")
    assert page.url.endswith("/console/signin")


@pytest.mark.usefixtures("no_champion_left")  # the promotion below is tenant-scoped, but history is shared
def test_pipeline_page_and_keyboard_use(page, server, keys, db):
    url = server[0]
    ui.promote_served_config(db, keys["tenant_a"])
    seen = ui.Recorder(page)
    page.goto(f"{url}/console/signin")
    ui.tab_to(page, "key")  # autofocused: no Tab needed
    page.keyboard.type(keys["a"])
    page.keyboard.press("Enter")
    page.wait_for_url(f"{url}/console/ask")
    ui.tab_to(page, "question")
    page.keyboard.type("How long is the carbon frame warranty?")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "collection"
    ui.tab_to(page, "ask-button")
    page.keyboard.press("Enter")
    page.wait_for_selector("#citations li a", timeout=60_000)
    assert "7 years" in page.locator("#answer").inner_text()
    page.goto(f"{url}/console/pipeline")
    ui.check_accessible(page)
    assert page.locator("text=p99 latency").count() == 1 and page.locator("text=answer cache hit rate").count() == 1
    assert page.locator("#served-h + table tbody tr").count() >= 1
    history = page.locator("#history-h + table tbody tr").first.inner_text()
    assert "promote" in history and "ndcg@5: 0.81" in history and "beat the champion" in history
    assert page.locator(f"a[href='{MLFLOW_UI}/#/runs/0123456789abcdef']").count() == 1
    ui.shot(page, "pipeline")
    assert seen.outside(url) == []
