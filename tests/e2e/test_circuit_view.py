"""The circuit view as a reader of the paper's figures would use it, in Chromium: the token strip with
every node's value at every position of a task prompt pair, node labels from the profile, heads and
inputs/outputs drawn, badges that say when a circuit fails, the slider at the circuit's own k, large
circuits collapsed by head/site, and the SVG export."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

TIMEOUT = 60_000
API = "/api/v1"


def open_view(page: Page, live, circuit_id: int, query: str = "") -> None:
    page.goto(f"{live.url}/#/circuits/{circuit_id}{query}")
    expect(page.locator("#circuit-header h1")).to_contain_text(f"Circuit {circuit_id}", timeout=TIMEOUT)
    page.wait_for_function("window.circuitRenderMs !== undefined", timeout=TIMEOUT)


def strip_values(page: Page, side: str) -> dict[str, list[float]]:
    return page.evaluate(
        """(side) => Object.fromEntries([...document.querySelectorAll(
            `#token-strip table.strip[data-side=${side}] tr[data-node]`)].map((tr) => [tr.dataset.node,
            [...tr.querySelectorAll('td.cell')].map((td) => Number(td.dataset.value))]))""",
        side,
    )


def model_d_head(live) -> int:
    model = httpx.get(f"{live.url}{API}/models/{live.model_id}", timeout=60).json()
    return model["config"]["model"]["d_head"]


def wait_for_labels(page: Page) -> None:
    page.wait_for_function(
        "() => window.circuitGraph.nodes('.member').every((n) => n.data('auto') !== undefined)",
        timeout=TIMEOUT,
    )


def test_token_strip_shows_every_nodes_activation_on_the_chosen_pair(page: Page, live):
    circuit = httpx.get(f"{live.url}{API}/circuits/{live.view_circuit_id}", timeout=120).json()
    names = sorted(n["name"] for n in circuit["nodes"])
    assert 0 < len(names) <= 50
    open_view(page, live, live.view_circuit_id, "?pair=1")
    expect(page.locator("#token-strip table.strip[data-side=B]")).to_be_visible(timeout=TIMEOUT)
    samples = httpx.get(
        f"{live.url}{API}/tasks/{circuit['task']}/samples",
        params={"model_id": circuit["model_id"], "n": 8},
        timeout=120,
    ).json()["items"]
    pair = samples[1]  # ?pair=1: the second pair of the task view
    body = {"prompts": [pair["prompt_a"], pair["prompt_b"]], "off": []}
    want = httpx.post(f"{live.url}{API}/circuits/{live.view_circuit_id}/trace", json=body, timeout=120).json()
    for side, trace in zip("AB", want["traces"], strict=True):
        got = strip_values(page, side)
        assert sorted(got) == names  # a row per circuit node
        tokens = page.locator(f"#token-strip table.strip[data-side={side}] th.tok")
        assert tokens.count() == len(trace["tokens"])
        for n in names:
            assert len(got[n]) == len(trace["tokens"])
            pairs = zip(got[n], trace["activations"][n], strict=True)
            assert all(abs(a - b) <= 1e-5 * max(1, abs(b)) for a, b in pairs), n
        diff = page.locator(f".strip-pane[data-side={side}] .logit-diff")
        assert abs(float(diff.get_attribute("data-value")) - trace["logit_diff_calibrated"]) < 1e-5
    # Hovering a graph node marks its row; hovering a token colours the graph by that position.
    name = names[0]
    page.evaluate("(n) => window.circuitGraph.getElementById(n).emit('mouseover')", name)
    row = page.locator(f"#token-strip table.strip[data-side=A] tr[data-node='{name}']")
    expect(row).to_have_class(re.compile("hl"))
    colours = "() => window.circuitGraph.nodes('.member').map((n) => n.style('background-color'))"
    plain = page.evaluate(colours)
    page.locator("#token-strip table.strip[data-side=A] td.cell[data-pos='0']").first.hover()
    assert sum(a != b for a, b in zip(plain, page.evaluate(colours), strict=True)) > 0
    # Live ablation: a node switched off is its mean at every position of the new trace.
    page.evaluate("(n) => window.circuitGraph.getElementById(n).emit('mouseout')", name)
    page.locator("#token-strip").hover()
    acts = want["traces"][0]["activations"]
    off = max(names, key=lambda n: max(acts[n]) - min(acts[n]))  # the node that varies most
    before = strip_values(page, "A")[off]
    assert len(set(before)) > 1, "the chosen node varies over the prompt"
    page.evaluate("(n) => window.circuitGraph.getElementById(n).emit('tap', [])", off)
    expect(page.locator("#toggle-node")).to_have_text("Ablate node", timeout=TIMEOUT)
    page.locator("#toggle-node").click()
    page.wait_for_function(
        """(n) => { const sel = `#token-strip table.strip[data-side=A] tr[data-node="${n}"]`;
            const tr = document.querySelector(sel); if (!tr) return false;
            const v = [...tr.querySelectorAll('td.cell')].map((td) => td.dataset.value);
            return new Set(v).size === 1; }""",
        arg=off,
        timeout=TIMEOUT,
    )
    expect(page.locator("#strip-status")).to_contain_text("1 node(s) off")
    assert not page.page_errors


def test_nodes_say_what_they_are_heads_and_inputs_outputs_drawn(page: Page, live):
    open_view(page, live, live.view_circuit_id)
    wait_for_labels(page)
    labels = httpx.get(f"{live.url}{API}/circuits/{live.view_circuit_id}/labels", timeout=120).json()["items"]
    assert any(item["top_tokens"] for item in labels)  # the seeded model is profiled
    drawn = page.evaluate(
        """() => Object.fromEntries(window.circuitGraph.nodes('.member').map((n) => [n.id(),
            {label: n.data('label'), parent: n.parent().length ? n.parent().id() : null}]))"""
    )
    d_head = model_d_head(live)
    for item in labels:
        n = item["node"]
        index = int(n.split("[")[1][:-1])
        assert drawn[n]["label"] == f"{index}\n{item['label']}"  # index and the profile's label
        if re.search(r"\.attn\.[qkv]\[", n):
            layer = n.split(".")[0]
            assert item["head"] == index // d_head and drawn[n]["parent"] == f"head:{layer}.{index // d_head}"
        else:
            assert drawn[n]["parent"] is None
    io = page.evaluate(
        """() => ['io:embed', 'io:logit'].map((id) => { const n = window.circuitGraph.getElementById(id);
            return {label: n.data('label'), y: n.position('y'), degree: n.degree()}; })"""
    )
    ys = page.evaluate("() => window.circuitGraph.nodes('.member').map((n) => n.position('y'))")
    assert io[0]["y"] > max(ys) and io[1]["y"] < min(ys)  # embedding at the bottom, logits at the top
    assert "embedding" in io[0]["label"] and "logit(" in io[1]["label"]
    writes = [i for i in labels if i["logit_weight"] is not None]
    page.wait_for_function(f"() => window.circuitGraph.getElementById('io:logit').degree() === {len(writes)}")
    kinds = page.evaluate("() => [...new Set(window.circuitGraph.edges().map((e) => e.data('kind')))]")
    assert "embed" in kinds and "logit" in kinds
    # Uncluttered at the default zoom: no two node labels overlap.
    overlaps = page.evaluate(
        """() => { const bs = window.circuitGraph.nodes('.member').map((n) =>
            n.boundingBox({includeNodes: false, includeLabels: true})); let k = 0;
            for (let i = 0; i < bs.length; i++) for (let j = i + 1; j < bs.length; j++) {
              const a = bs[i], b = bs[j];
              if (a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2) k++; }
            return k; }"""
    )
    assert overlaps == 0
    # The SVG export carries every node and its label.
    with page.expect_download() as dl:
        page.locator("#export-svg").click()
    svg = open(dl.value.path()).read()
    texts = re.findall(r"<text[^>]*>(.*?)</text>", svg, flags=re.S)
    assert len(texts) >= len(labels)
    assert all(any(str(int(i["node"].split("[")[1][:-1])) in t for t in texts) for i in labels)
    assert not page.page_errors


def test_failing_circuit_badges_and_slider_at_its_own_k(page: Page, live):
    circuit = httpx.get(f"{live.url}{API}/circuits/{live.circuit_id}", timeout=120).json()
    assert circuit["meets_target"] is False  # the 40-step seeded model cannot do the task
    open_view(page, live, live.circuit_id)
    badge = page.locator("#check-badges .badge[data-check=sufficiency]")
    expect(badge).to_have_attribute("data-pass", "false")
    expect(badge).to_have_class(re.compile("fail"))
    for check in circuit["validation"].get("checks", []):
        expect(page.locator(f"#check-badges .badge[data-check={check['name']}]")).to_have_attribute(
            "data-pass", str(check["passed"]).lower()
        )
    ks = [p["k"] for p in circuit["curve"]]
    own = min(range(len(ks)), key=lambda i: abs(ks[i] - circuit["n_nodes"]))
    assert page.locator("#k-slider").input_value() == str(own)
    expect(page.locator("#k-label")).to_contain_text(f"k = {ks[own]}:")
    # 1,408 nodes: collapsed into heads and sites; a click on a group expands it.
    groups = page.evaluate("() => window.circuitGraph.nodes('.group').map((n) => n.id())")
    assert 0 < len(groups) < 60 and page.evaluate("() => window.circuitGraph.nodes('.member').length") == 0
    group = next(g for g in groups if g.startswith("head:"))
    page.evaluate("(g) => window.circuitGraph.getElementById(g).emit('tap', [])", group)
    page.wait_for_function("() => window.circuitGraph.nodes('.member').length > 0", timeout=TIMEOUT)
    members = page.evaluate("() => window.circuitGraph.nodes('.member').map((n) => n.id())")
    layer, head = group.removeprefix("head:").split(".")
    d_head = model_d_head(live)
    assert all(m.startswith(f"{layer}.attn.") for m in members)
    assert all(int(m.split("[")[1][:-1]) // d_head == int(head) for m in members)
    assert f"expand={group}".replace(":", "%3A") in page.url or f"expand={group}" in page.url
    assert not page.page_errors
