"""Helpers for the browser tests of the console: Chromium from Debian driven by Playwright, page checks."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from sluice.settings import PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = PROJECT_ROOT / "docs" / "img"

# Every control's accessible name: a <label for>, aria-label, aria-labelledby, a wrapping label or its text.
UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
.filter(el => {
  const byFor = el.id && document.querySelector(`label[for="${el.id}"]`);
  const named = el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') || el.closest('label');
  const text = el.tagName === 'BUTTON' && el.textContent.trim();
  return !(byFor || named || text);
}).map(el => el.outerHTML.slice(0, 120))"""

# WCAG 2 contrast ratio of an element's computed text colour on the first opaque background behind it.
CONTRAST = """(selector) => {
  const rgb = (s) => s.match(/[\\d.]+/g).map(Number);
  const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = ([r, g, b]) => { const c = [r, g, b].map(lin);
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]; };
  const el = document.querySelector(selector);
  let bg = el, color;
  while (bg) {
    color = rgb(getComputedStyle(bg).backgroundColor);
    if (color.length < 4 || color[3] > 0) break;
    bg = bg.parentElement;
  }
  const back = bg ? color : [255, 255, 255];
  const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(back)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""


@pytest.fixture(scope="module")
def browser():
    """One headless chromium per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


def launch(playwright):
    """Headless Debian chromium (never a downloaded browser build); skip the test when it is not installed."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed: run scripts/ensure-chromium.sh as root")
    # --no-sandbox: CI runs as root, where Chromium refuses its sandbox.
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])


class Recorder:
    """Every URL a page asks for (scripts, styles, images, fetches, navigations)."""

    def __init__(self, page):
        self.urls: list[str] = []
        page.on("request", lambda request: self.urls.append(request.url))

    def outside(self, origin: str) -> list[str]:
        """Requests that left `origin` (blob: and data: URLs stay in the page)."""
        own = urlsplit(origin)[:2]
        return [u for u in self.urls if urlsplit(u).scheme not in ("blob", "data") and urlsplit(u)[:2] != own]


def shot(page, name: str) -> None:
    """A full-page screenshot to docs/img/console-<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"console-{name}.png"), full_page=True)


def sign_in(page, url: str, key: str) -> None:
    page.goto(f"{url}/console/signin")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def check_accessible(page) -> None:
    """Every control is labelled and the main text reads at WCAG AA contrast (4.5:1) or better."""
    assert page.evaluate(UNLABELLED) == []
    for selector in ("body", "main h1", "header nav a", "button"):
        if page.locator(selector).count():
            assert page.evaluate(CONTRAST, selector) >= 4.5, selector


def promote_served_config(db, tenant: str) -> None:
    """A tenant-scoped promotion of the config already served (nothing changes but the history)."""
    from sluice.champion import record_promotion, store_config
    from sluice.config import PipelineConfig

    config = PipelineConfig(name="console-test")
    store_config(db, config)
    metrics = {"ndcg@5": 0.81, "faithfulness": 0.9}
    record_promotion(db, config.config_id, run_id="0123456789abcdef", model_version="1", evaluated_on="gold.jsonl",
                     reason="beat the champion", metrics=metrics, tenant=tenant)  # fmt: skip


def tab_to(page, element_id: str, presses: int = 15) -> None:
    """Press Tab until the element with this id has the focus (from wherever the focus is)."""
    for _ in range(presses):
        if page.evaluate("document.activeElement.id") == element_id:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"#{element_id} never took the focus in {presses} presses of Tab")


def check_feedback(page, url: str) -> None:
    """Thumbs where the API has POST /v1/feedback; hidden where it has not."""
    if "/v1/feedback" not in httpx.get(f"{url}/openapi.json").json()["paths"]:
        assert page.locator("#feedback").is_hidden()
        return
    page.get_by_label("Correction (optional)").fill("Returns take 45 days.")
    page.get_by_role("button", name="Thumbs up: useful").click()
    page.wait_for_selector("#feedback-status:has-text('recorded')", timeout=10_000)
