"""The landing page (#/) and the browser's one-time sign-in: the URL `circuits serve` prints on loopback
signs a fresh browser in, and a prune job goes through the Jobs page's form with no key typed."""

from __future__ import annotations

import re

from live import login_url
from playwright.sync_api import Page, expect

TIMEOUT = 30_000


def test_landing_page_shows_the_task_table_and_the_quote_link(page: Page, live):
    page.goto(f"{live.url}/#/")
    table = page.locator("#overview-tasks")
    expect(table).to_be_visible(timeout=TIMEOUT)
    row = table.locator("tr[data-task=single_double_quote]")
    expect(row).to_be_visible()
    expect(row.locator("a", has_text="sparse")).to_have_attribute(
        "href", "#/circuits/" + str(live.bridged_circuit_id)
    )
    expect(page.locator("#about-models")).to_contain_text("layers × d_model 64")
    expect(page.locator("#differs")).to_contain_text("8 × 2048")
    expect(page.locator("#train-your-own")).to_contain_text("circuits train")
    expect(page.locator(".badge.demo")).to_have_count(0)  # the seeded models were trained here
    page.locator("#quote-link").click()
    expect(page.locator("#circuit-header")).to_contain_text("single_double_quote", timeout=TIMEOUT)
    page.goto(f"{live.url}/#/models")  # the models list moved here
    expect(page.locator("#models-table a", has_text="test-sparse")).to_be_visible(timeout=TIMEOUT)
    assert not page.page_errors


def test_printed_url_signs_the_browser_in_and_a_prune_job_is_accepted(browser, live):
    context = browser.new_context(viewport={"width": 1400, "height": 950})  # no key in localStorage
    pg = context.new_page()
    try:
        pg.goto(login_url(live.url))
        assert pg.url.rstrip("/") == live.url  # 303 to the app
        expect(pg.locator("#session")).to_contain_text("signed in (this browser)", timeout=TIMEOUT)
        expect(pg.locator("#apikey-label")).to_be_hidden()
        assert pg.evaluate("() => localStorage.getItem('circuits.apiKey')") is None
        assert "circuits_key" not in pg.evaluate("() => document.cookie")  # HttpOnly

        pg.goto(f"{live.url}/#/jobs?model_id={live.model_id}")
        form = pg.locator("#form-prune")
        expect(form).to_be_visible(timeout=TIMEOUT)
        small = {
            "runs": 1,
            "steps": 3,
            "batch_pairs": 8,
            "eval_pairs": 16,
            "curve_points": 2,
            "curve_pairs": 16,
        }
        for field, value in small.items():
            form.locator(f"input[name={field}]").fill(str(value))
        with pg.expect_response(
            lambda r: r.url.endswith("/api/v1/jobs") and r.request.method == "POST"
        ) as resp:
            form.locator("button[type=submit]").click()
        assert resp.value.status == 202, resp.value.text()
        job_id = resp.value.json()["id"]
        row = pg.locator(f"#jobs-body tr[data-job='{job_id}']")
        expect(row).to_have_attribute(
            "data-status", re.compile(r"^(queued|running|succeeded)$"), timeout=TIMEOUT
        )
        cancel = row.locator("button.cancel")
        if cancel.count():  # spare the shared machine; cancelling is a write too
            with pg.expect_response(lambda r: r.url.endswith("/cancel")) as cancelled:
                cancel.click()
            assert cancelled.value.status == 202, cancelled.value.text()

        again = context.new_page().goto(login_url(live.url))  # the token was good once
        assert again is not None and again.status == 403
    finally:
        context.close()
