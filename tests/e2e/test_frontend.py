"""The acceptance path in a real browser: models, a circuit, a node's examples, live ablation, export,
a prune, a bridge and a transcoder job submitted through their forms and followed to completion, form
errors, API errors."""

from __future__ import annotations

import json
import re

import httpx
from playwright.sync_api import Locator, Page, expect

TIMEOUT = 30_000


def click_node(page: Page, name: str) -> None:
    """Zoom the graph onto a node and click it where it is drawn."""
    x, y = page.evaluate(
        """(name) => {
            const cy = window.circuitGraph, n = cy.getElementById(name);
            cy.zoom(3); cy.center(n);
            const p = n.renderedPosition(), r = cy.container().getBoundingClientRect();
            return [r.left + p.x, r.top + p.y];
        }""",
        name,
    )
    page.mouse.click(x, y)


def strongest_source(page: Page) -> str:
    return page.evaluate(
        """() => {
            const w = (e) => Math.abs(e.data('weight'));
            const es = window.circuitGraph.edges().sort((a, b) => w(b) - w(a));
            return es[0].source().id();
        }"""
    )


def open_circuit(page: Page, live, query: str = "?expand=all") -> None:
    """The seeded circuit (1,408 nodes) with every node drawn (by default it is collapsed by head/site)."""
    page.goto(f"{live.url}/#/circuits/{live.circuit_id}{query}")
    expect(page.locator("#circuit-header h1")).to_contain_text(f"Circuit {live.circuit_id}", timeout=TIMEOUT)
    page.wait_for_function("window.circuitRenderMs !== undefined", timeout=TIMEOUT)


def test_models_list_and_model_page(page: Page, live):
    page.goto(f"{live.url}/#/models")
    link = page.locator("#models-table a", has_text="test-sparse")
    expect(link).to_be_visible(timeout=TIMEOUT)
    link.click()
    expect(page.locator("h1")).to_contain_text("test-sparse")
    expect(page.locator(".plot[data-metric=loss] .main-svg").first).to_be_visible(timeout=TIMEOUT)
    seeded = page.locator(f"#circuits-table tr:has(a[href='#/circuits/{live.circuit_id}'])")
    expect(seeded).to_contain_text("single_double_quote")


def test_circuit_header_graph_and_node_examples(page: Page, live):
    open_circuit(page, live)
    header = page.locator("#circuit-header")
    for label in ("task", "target loss", "full", "circuit", "ablated", "nodes", "edges"):
        expect(header).to_contain_text(label)
    circuit = httpx.get(f"{live.url}/api/v1/circuits/{live.circuit_id}").json()
    verdict = page.locator("#target-verdict")
    expected = "meets its target" if circuit["meets_target"] else "misses its target on the test split"
    expect(verdict).to_contain_text(expected)
    assert circuit["meets_target"] == (circuit["losses"]["circuit"] <= circuit["target_loss"])
    counts = page.evaluate(
        "() => [window.circuitGraph.nodes().not('.rowlabel').length, window.circuitGraph.edges().length]"
    )
    n_nodes = int(re.search(r"nodes (\d+)", header.inner_text()).group(1))
    assert counts[0] == n_nodes and 0 < counts[1] <= 2000
    name = strongest_source(page)
    click_node(page, name)
    expect(page.locator("#node-title")).to_have_text(name, timeout=TIMEOUT)
    expect(page.locator("#node-stats")).to_contain_text("firing frequency")
    heatmaps = page.locator("#node-examples .heatmap")
    expect(heatmaps.first).to_be_visible()
    assert heatmaps.count() > 0
    page.locator("#task-view summary").click()
    values = page.locator("#task-view-table td[data-value]")
    expect(values).to_have_count(3, timeout=60_000)
    a, b, diff = (float(values.nth(i).get_attribute("data-value")) for i in range(3))
    assert abs((a - b) - diff) < 1e-9
    fired = page.locator("#node-examples .heatmap .tok.fire")
    assert fired.count() == heatmaps.count()  # the firing token is marked in each example
    assert f"node={name}" in page.url.replace("%5B", "[").replace("%5D", "]")
    assert not page.page_errors


def test_live_ablation_changes_probabilities(page: Page, live):
    open_circuit(page, live)
    p_a = page.locator("#ablation-table td[data-key=p_a]")
    expect(p_a).to_have_attribute("data-value", re.compile(r"\d"), timeout=60_000)
    before = float(p_a.get_attribute("data-value"))
    name = strongest_source(page)
    click_node(page, name)
    expect(page.locator("#toggle-node")).to_have_text("Ablate node", timeout=TIMEOUT)
    page.locator("#toggle-node").click()
    expect(page.locator("#toggle-node")).to_have_text("Restore node")
    expect(page.locator("#ablation")).to_contain_text("1 node(s) ablated")
    page.wait_for_function(
        "(b) => { const c = document.querySelector('#ablation-table td[data-key=p_a]');"
        " return c && c.dataset.value && Number(c.dataset.value) !== b; }",
        arg=before,
        timeout=60_000,
    )
    after, p_b, p_correct = page.evaluate(  # the cells of one rendering (a later answer may replace it)
        "() => ['p_a', 'p_b', 'p_correct'].map((k) => Number("
        "document.querySelector(`#ablation-table td[data-key=${k}]`).dataset.value))"
    )
    # p_a is P(A) on the A prompts, p_b P(B) on the B prompts: as many of each, so p_correct is their mean
    assert after != before and abs((after + p_b) / 2 - p_correct) < 1e-3
    assert "off=" in page.url


def test_faithfulness_scores_controls_and_ablation_kind(page: Page, live):
    circuit = httpx.get(f"{live.url}/api/v1/circuits/{live.circuit_id}").json()
    open_circuit(page, live)
    scores = page.locator("#faithfulness-scores tr[data-mode]")
    expect(scores).to_have_count(3, timeout=TIMEOUT)
    for mode in ("mean", "zero", "resample"):
        cpr = circuit["faithfulness"]["modes"][mode]["cpr"]
        expect(page.locator(f"#faithfulness-scores tr[data-mode={mode}] td").nth(1)).to_have_text(
            f"{cpr:.3f}"
        )
    expect(page.locator("#faithfulness-plot .main-svg").first).to_be_visible(timeout=60_000)
    checks = circuit["validation"]["checks"]
    assert [c["name"] for c in checks][-2:] == ["nonsense_task", "generalisation"]
    for check in checks:
        verdict = "pass" if check["passed"] else "FAIL"
        expect(page.locator(f"#controls tr[data-check={check['name']}] td").nth(1)).to_have_text(verdict)
    # Live ablation under zero ablation: the page shows what the API computes for it.
    p_a = page.locator("#ablation-table td[data-key=p_a]")
    expect(p_a).to_have_attribute("data-value", re.compile(r"\d"), timeout=60_000)
    with page.expect_response(lambda r: r.url.endswith("/ablate") and r.request.method == "POST") as answer:
        page.select_option("#ablation-kind", "zero")
    assert json.loads(answer.value.request.post_data)["ablation"] == "zero"
    assert answer.value.json()["ablation"] == "zero"
    expect(p_a).to_have_attribute("data-value", str(answer.value.json()["p_a"]), timeout=TIMEOUT)
    assert "ablation=zero" in page.url


def test_probe_runs_from_the_circuit_page(page: Page, live):
    open_circuit(page, live)
    run = page.locator("button.run-probe[data-probe=quote_distance]")
    expect(run).to_be_visible(timeout=60_000)
    node = page.locator("select.probe-node[data-probe=quote_distance] option").nth(1).get_attribute("value")
    page.select_option("select.probe-node[data-probe=quote_distance]", node)
    run.click()
    result = page.locator(".probe-result[data-probe=quote_distance]")
    expect(result).to_be_visible(timeout=120_000)
    api = httpx.get(f"{live.url}/api/v1/circuits/{live.circuit_id}/probes").json()["results"][0]
    assert api["node"] == node
    expect(result.locator("tr[data-value]")).to_have_count(len(api["points"]))
    first = api["points"][0]
    expect(result.locator("tr[data-value='0'] td").nth(2)).to_have_text(f"{first['circuit_accuracy']:.3f}")
    expect(result.locator(".probe-accuracy .main-svg").first).to_be_visible(timeout=60_000)
    expect(result.locator(".probe-activation .main-svg").first).to_be_visible()
    assert not page.page_errors


def test_export_png_and_json(page: Page, live):
    open_circuit(page, live)
    with page.expect_download() as dl:
        page.locator("#export-png").click()
    png = dl.value
    assert png.suggested_filename == f"circuit-{live.circuit_id}.png"
    assert open(png.path(), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with page.expect_download() as dl:
        page.locator("#export-svg").click()
    svg = open(dl.value.path()).read()
    assert dl.value.suggested_filename.endswith(".svg") and "<svg" in svg[:500]
    assert svg.count("<path") + svg.count("<circle") + svg.count("<ellipse") > 100  # nodes and edges drawn
    with page.expect_download() as dl:
        page.locator("#export-json").click()
    data = json.loads(open(dl.value.path()).read())
    assert data["id"] == live.circuit_id and len(data["nodes"]) == data["n_nodes"]


def field_error(form: Locator, field: str) -> Locator:
    return form.locator(f".field-error[data-field={field}]")


def test_job_form_shows_field_errors(page: Page, live):
    page.goto(f"{live.url}/#/jobs")
    form = page.locator("#form-prune")
    expect(form).to_be_visible(timeout=TIMEOUT)
    form.locator("input[name=steps]").fill("0")
    form.locator("input[name=target_loss]").fill("-1")
    form.locator("input[name=curve_points]").fill("1")
    form.locator("button[type=submit]").click()
    expect(field_error(form, "steps")).to_contain_text("greater than or equal to 1")
    expect(field_error(form, "target_loss")).to_contain_text("greater than 0")
    expect(field_error(form, "curve_points")).to_contain_text("greater than or equal to 2")
    expect(field_error(form, "runs")).to_have_text("")  # valid fields stay clean
    expect(form.locator(".form-error")).to_have_text("")  # every message found its field
    train = page.locator("#form-train")
    train.locator("input[name=steps]").fill("5000000")  # within the field's bound, above the cap
    train.locator("button[type=submit]").click()
    expect(field_error(train, "steps")).to_contain_text("exceeds the limit")
    profile = page.locator("#form-profile")
    bad = {
        "tokens": ("10", "greater than or equal to 1024"),
        "examples_per_bin": ("99", "less than or equal to 20"),
        "context": ("-1", "greater than or equal to 0"),
    }
    for field, (value, _) in bad.items():
        profile.locator(f"input[name={field}]").fill(value)
    profile.locator("button[type=submit]").click()
    for field, (_, message) in bad.items():
        expect(field_error(profile, field)).to_contain_text(message)
    expect(page.locator("#jobs-table")).to_be_visible()  # the page is still there
    assert not page.page_errors


def test_prune_job_through_the_form_finishes(page: Page, live):
    page.goto(f"{live.url}/#/jobs?model_id={live.model_id}")
    form = page.locator("#form-prune")
    expect(form).to_be_visible(timeout=TIMEOUT)
    small = {"runs": 1, "steps": 3, "batch_pairs": 8, "eval_pairs": 16, "curve_points": 2, "curve_pairs": 16}
    for field, value in small.items():
        form.locator(f"input[name={field}]").fill(str(value))
    # Record every state the job rows show: progress must arrive live (SSE), not only at the end.
    page.evaluate(
        """() => {
            window.seenJobStates = [];
            window.jobObserver = new MutationObserver(() => {  // held on window so it is not collected
                for (const r of document.querySelectorAll('#jobs-body tr[data-status=running]'))
                    window.seenJobStates.push([r.dataset.job, Number(r.dataset.progress)]);
            });
            const body = document.querySelector('#jobs-body');
            window.jobObserver.observe(body, {childList: true, subtree: true});
        }"""
    )
    with page.expect_response(
        lambda r: r.url.endswith("/api/v1/jobs") and r.request.method == "POST"
    ) as resp:
        form.locator("button[type=submit]").click()
    assert resp.value.status == 202
    job_id = resp.value.json()["id"]
    row = page.locator(f"#jobs-body tr[data-job='{job_id}']")
    expect(row).to_contain_text("prune", timeout=TIMEOUT)
    expect(row).to_have_attribute("data-status", "succeeded", timeout=600_000)
    seen = page.evaluate("() => window.seenJobStates")
    assert any(job == job_id and 0 < progress < 1 for job, progress in seen), seen
    link = row.locator("a", has_text="circuit")
    link.click()
    expect(page.locator("#circuit-header")).to_contain_text("single_double_quote", timeout=TIMEOUT)


def submit_form(page: Page, kind: str, values: dict, selects: dict, checks: dict) -> str:
    """Fill a job form generated from the schema, submit it and return the accepted job's id."""
    form = page.locator(f"#form-{kind}")
    expect(form).to_be_visible(timeout=TIMEOUT)
    for field, value in selects.items():
        form.locator(f"select[name={field}]").select_option(str(value))
    for field, value in values.items():
        form.locator(f"input[name={field}]").fill(str(value))
    for field, on in checks.items():
        form.locator(f"input[name={field}]").set_checked(on)
    with page.expect_response(
        lambda r: r.url.endswith("/api/v1/jobs") and r.request.method == "POST"
    ) as resp:
        form.locator("button[type=submit]").click()
    assert resp.value.status == 202, resp.value.text()
    job = resp.value.json()
    assert job["kind"] == kind
    return job["id"]


def test_bridge_and_transcoder_jobs_from_their_forms(page: Page, live):
    """Every kind has a form built from the OpenAPI schema: a bridge and a transcoder job (tiny) are
    accepted and followed to the end in the job list."""
    import httpx

    dense = httpx.get(f"{live.url}/api/v1/models", params={"kind": "dense"}).json()["items"][0]["id"]
    page.goto(f"{live.url}/#/jobs")
    bridge = submit_form(
        page,
        "bridge",
        {"steps": 3},
        {"dense_model_id": dense, "preset": "test"},
        {},
    )
    transcoder = submit_form(
        page,
        "transcoder",
        {"l1": "0.3", "steps": 3, "batch_size": 2, "eval_batches": 1, "profile_tokens": 0, "tolerance": 0.5},
        {"model_id": dense},
        {"sae": False, "replace": True},
    )
    for job_id, kind in ((bridge, "bridge"), (transcoder, "transcoder")):
        row = page.locator(f"#jobs-body tr[data-job='{job_id}']")
        expect(row).to_contain_text(kind, timeout=TIMEOUT)
        expect(row).to_have_attribute("data-status", "succeeded", timeout=600_000)
    done = httpx.get(f"{live.url}/api/v1/jobs/{transcoder}").json()
    assert (
        done["params"]["l1"] == [0.3] and done["params"]["sae"] is False and done["result"]["transcoder_id"]
    )
    assert httpx.get(f"{live.url}/api/v1/jobs/{bridge}").json()["params"]["steps"] == 3
    assert not page.page_errors


def test_api_errors_are_shown_not_blank(page: Page, live):
    page.goto(f"{live.url}/#/circuits/999999")
    expect(page.locator(".error")).to_contain_text("404", timeout=TIMEOUT)
    page.goto(f"{live.url}/#/models/abc")
    expect(page.locator(".error")).to_contain_text("not an id")
    expect(page.locator("#topbar")).to_be_visible()
    # A failing server and a dropped connection: the message is shown in the page, the page stays.
    page.route("**/api/v1/models?*", lambda r: r.fulfill(status=503, json={"detail": "database unavailable"}))
    page.goto(f"{live.url}/#/models")
    expect(page.locator(".error")).to_contain_text("503: database unavailable", timeout=TIMEOUT)
    page.route(f"**/api/v1/circuits/{live.circuit_id}", lambda r: r.abort())
    page.goto(f"{live.url}/#/circuits/{live.circuit_id}")
    expect(page.locator(".error")).to_contain_text("network error", timeout=TIMEOUT)
    expect(page.locator("#topbar")).to_be_visible()


def test_playground_shows_per_token_activations(page: Page, live):
    open_circuit(page, live)
    name = strongest_source(page)
    click_node(page, name)
    expect(page.locator("#node-title")).to_have_text(name, timeout=TIMEOUT)
    page.locator("#playground-prompt").fill("x = 'a'\nprint(x)")
    page.locator("#playground-run").click()
    rows = page.locator("#playground-out table.playground tr")
    expect(rows.first).to_have_attribute("data-node", name, timeout=TIMEOUT)
    assert rows.count() == min(64, page.evaluate("() => window.circuitGraph.nodes().not('.rowlabel').length"))
    assert rows.first.locator(".tok").count() >= 5  # one cell per token of the prompt
    expect(page.locator("#playground-out")).to_contain_text("next token")


def test_compare_shows_both_circuits_side_by_side_with_overlap(page: Page, live):
    page.goto(f"{live.url}/#/circuits/{live.circuit_id}")
    expect(page.locator("#compare-with")).to_be_visible(timeout=TIMEOUT)
    page.locator("#compare-with").fill(str(live.small_circuit_id))
    page.locator("#compare-with").press("Enter")
    overlap = page.locator("#overlap")
    expect(overlap).to_contain_text("Nodes:", timeout=TIMEOUT)
    page.wait_for_function("window.compareGraphs !== undefined", timeout=TIMEOUT)
    a, b = page.locator("#cy-compare-a"), page.locator("#cy-compare-b")
    box_a, box_b = a.bounding_box(), b.bounding_box()
    assert box_a["width"] > 300 and box_b["width"] > 300 and box_a["height"] > 300
    assert box_a["x"] + box_a["width"] <= box_b["x"] and abs(box_a["y"] - box_b["y"]) < 1  # side by side
    counts = page.evaluate(
        """() => Object.fromEntries(Object.entries(window.compareGraphs).map(([side, cy]) => [side, {
            nodes: cy.nodes().length, own: cy.nodes('.own').length, shared: cy.nodes('.shared').length,
            edges: cy.edges().length, ownEdges: cy.edges('.own').length}]))"""
    )
    # B is A's 200 strongest edges and their nodes: every B node is shared, A has nodes of its own.
    numbers = re.search(r"Nodes: (\d+) shared, (\d+) only in A, (\d+) only in B", overlap.inner_text())
    shared, only_a, only_b = (int(x) for x in numbers.groups())
    assert only_b == 0 and only_a > 0
    assert counts["a"]["shared"] == shared and counts["a"]["own"] == only_a
    assert counts["b"]["nodes"] == shared and counts["b"]["own"] == 0
    assert counts["b"]["edges"] == 200 and counts["b"]["ownEdges"] == 0 and counts["a"]["ownEdges"] > 0
    # The same layout on both sides, the same view: a shared node is drawn at the same spot in each pane.
    name = page.evaluate("() => window.compareGraphs.b.nodes()[0].id()")
    pa, pb = (
        page.evaluate(f"() => window.compareGraphs.{side}.getElementById({name!r}).renderedPosition()")
        for side in "ab"
    )
    assert abs(pa["x"] - pb["x"]) < 1 and abs(pa["y"] - pb["y"]) < 1
    # Clicking a node in one pane selects it in both and puts it in the URL.
    x, y = page.evaluate(
        """(name) => {
            const cy = window.compareGraphs.b, n = cy.getElementById(name);
            cy.zoom(3); cy.center(n);
            const p = n.renderedPosition(), r = cy.container().getBoundingClientRect();
            return [r.left + p.x, r.top + p.y];
        }""",
        name,
    )
    page.mouse.click(x, y)
    expect(page.locator("#compare-selected")).to_contain_text(f"{name} — in A and B")
    assert page.evaluate(f"() => window.compareGraphs.a.getElementById({name!r}).selected()")
    assert page.evaluate("() => window.compareGraphs.a.zoom()") == 3  # panes pan and zoom together
    assert f"node={name}" in page.url.replace("%5B", "[").replace("%5D", "]")
    page.reload()
    expect(page.locator("#compare-selected")).to_contain_text(name, timeout=TIMEOUT)
    assert not page.page_errors


def open_circuit_id(page: Page, live, circuit_id: int, query: str = "?expand=all") -> None:
    page.goto(f"{live.url}/#/circuits/{circuit_id}{query}")
    expect(page.locator("#circuit-header h1")).to_contain_text(f"Circuit {circuit_id}", timeout=TIMEOUT)
    page.wait_for_function("window.circuitRenderMs !== undefined", timeout=TIMEOUT)


def plot_traces(page: Page, selector: str) -> list[dict]:
    """name, x and y of every trace of a plotly chart (plotly keeps them on its div as .data)."""
    page.wait_for_function(f"() => document.querySelector({selector!r})?.data?.length > 0", timeout=60_000)
    return page.evaluate(
        f"() => document.querySelector({selector!r}).data.map((t) => ({{name: t.name, x: t.x, y: t.y}}))"
    )


def test_bridged_node_steers_the_dense_model(page: Page, live):
    open_circuit_id(page, live, live.bridged_circuit_id)
    name = strongest_source(page)
    click_node(page, name)
    expect(page.locator("#node-title")).to_have_text(name, timeout=TIMEOUT)
    page.locator("#steer summary").click()
    page.locator("#steer-mode").select_option("add")
    page.eval_on_selector("#steer-max", "(el) => { el.value = '4'; el.dispatchEvent(new Event('input')); }")
    expect(page.locator("#steer-max-label")).to_have_text("0 … 4")
    assert "steer_mode=add" in page.url and "steer_max=4" in page.url
    # A 4xx answer is shown in the panel; the page stays.
    page.route("**/steer", lambda r: r.fulfill(status=422, json={"detail": "strengths: bad"}))
    page.locator("#steer-run").click()
    expect(page.locator("#steer-out .error")).to_contain_text("422: strengths: bad", timeout=TIMEOUT)
    expect(page.locator("#node-title")).to_have_text(name)
    page.unroute("**/steer")
    page.locator("#steer-run").click()
    meta = page.locator("#steer-meta")
    expect(meta).to_contain_text("control", timeout=120_000)
    control = re.search(r"control (\S+)", meta.inner_text()).group(1)
    traces = plot_traces(page, "#steer-plot")
    assert len(traces) == 3
    assert control in traces[2]["name"] and name in traces[0]["name"] and control != name
    assert traces[0]["x"] == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4]
    dense = traces[0]["y"]
    assert all(0 <= p <= 1 for t in traces for p in t["y"])
    assert max(dense) - min(dense) > 1e-4  # the dense model's P(A) moves with the strength
    assert not page.page_errors


def test_transcoder_plots_and_attribution_edges(page: Page, live):
    page.goto(f"{live.url}/#/models")
    link = page.locator(f"#transcoders-table a[href='#/transcoders/{live.transcoder_id}']")
    expect(link).to_be_visible(timeout=TIMEOUT)
    link.click()
    expect(page.locator("h1")).to_contain_text(f"Transcoders {live.transcoder_id}")
    for layer in ("0", "1"):
        names = [t["name"] for t in plot_traces(page, f".plot[data-layer='{layer}']")]
        assert {"transcoder", "SAE", "clean CE", "MLP mean-ablated", "MLP zero-ablated"} <= set(names)
    line = plot_traces(page, ".plot[data-layer='1']")[0]
    assert len(line["x"]) == 3 and line["x"] == sorted(line["x"])  # one point per L1, by L0
    page.locator(f"a[href='#/circuits/{live.transcoder_circuit_id}']").click()
    header = page.locator("#circuit-header h1")
    expect(header).to_contain_text(f"Circuit {live.transcoder_circuit_id}", timeout=TIMEOUT)
    page.wait_for_function("window.circuitRenderMs !== undefined", timeout=TIMEOUT)
    rows = page.evaluate("() => window.circuitGraph.nodes('.rowlabel').map((n) => n.data('label'))")
    assert any(r.endswith(".mlp.transcoder") for r in rows)
    # The live ablation of the first draw answers for features too (switched off in the replacement model).
    expect(page.locator("#ablation-table td[data-key=loss][data-value]")).to_be_visible(timeout=TIMEOUT)
    edge = page.evaluate(
        """() => {
            const e = window.circuitGraph.edges().filter((e) => e.data('kind') === 'attribution')
                .sort((a, b) => Math.abs(b.data('weight')) - Math.abs(a.data('weight')))[0];
            e.emit('mouseover');
            return {target: e.target().id(), tip: window.circuitGraph.container().title};
        }"""
    )
    assert "activation" in edge["tip"] and "weight product" in edge["tip"]
    click_node(page, edge["target"])
    expect(page.locator("#node-title")).to_have_text(edge["target"], timeout=TIMEOUT)
    cells = page.locator("table[data-edges=incoming] td[data-factor=activation]")
    expect(cells.first).to_be_visible()
    act = float(cells.first.get_attribute("data-value"))
    weight = float(cells.first.get_attribute("data-weight"))
    product = page.locator("table[data-edges=incoming] td[data-factor=weight_product]").first
    assert abs(act * float(product.get_attribute("data-value")) - weight) <= 1e-4 * max(1, abs(weight))
    if ".mlp.transcoder[" in edge["target"]:  # a feature's page: its de-embedding
        top = page.locator("#de-embedding table[data-side=top] td.num")
        assert top.count() == 10
        scores = [float(top.nth(i).inner_text()) for i in range(10)]
        assert scores == sorted(scores, reverse=True)
    assert not page.page_errors
