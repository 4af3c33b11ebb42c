"""The dashboard (web/) in a real browser against a real daemon.

Every number the page shows is checked against the daemon's API answer for
the same request: the page must draw what lensd computed, not something
near it. Values cross as JSON numbers (float32 printed in full), so the
page's data attributes equal the API's to float32 rounding (1e-7 relative).
Screenshots (light and dark, 1280x800) are saved as test artifacts in
$LENSD_BUILD/browser-screenshots.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from dashboard_page import wait_idle
from lensd_http import tensor

INDUCTION_PROMPT = "The cat sat on the mat. The cat sat on the m"


def api(daemon, path, body=None):
    status, _, raw = daemon.post(path, body) if body is not None else daemon.get(path)
    answer = json.loads(raw)
    assert status == 200, answer
    return answer


def display(token: str) -> str:
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


def run_prompt(page, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.click("#run")
    wait_idle(page)


def focus_geometry(page) -> dict:
    return page.eval_on_selector("#focus", "c => ({...c.dataset, box: c.getBoundingClientRect().toJSON()})")


def hover_cell(page, dest: int, src: int) -> dict:
    """Moves the mouse onto cell (dest, src) of the focused head; returns the tooltip's data."""
    g = focus_geometry(page)
    cell = float(g["cell"])
    page.evaluate(f"window.scrollBy(0, {g['box']['y'] + float(g['originY']) + dest * cell - 400})")  # into view
    g = focus_geometry(page)
    page.mouse.move(g["box"]["x"] + float(g["originX"]) + (src + 0.5) * cell,
                    g["box"]["y"] + float(g["originY"]) + (dest + 0.5) * cell)
    page.wait_for_selector("#tooltip:not([hidden])", timeout=3000)
    return page.eval_on_selector("#tooltip", "t => ({...t.dataset, text: t.textContent})")


def test_the_model_picker_lists_the_daemons_models(dashboard, dashboard_lensd):
    page = dashboard()
    names = [m["name"] for m in api(dashboard_lensd, "/v1/models")["models"]]
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == names
    assert page.input_value("#model") == "induction-2l"


def test_the_token_strip_shows_the_tokenized_prompt(dashboard, dashboard_lensd):
    page = dashboard()
    prompt = "Hello,  world!\nHello"
    run_prompt(page, prompt)
    str_tokens = api(dashboard_lensd, "/v1/models/induction-2l/tokenize", {"prompt": prompt})["str_tokens"][0]
    shown = page.eval_on_selector_all("#tokens .token .text", "ts => ts.map(t => t.textContent)")
    positions = page.eval_on_selector_all("#tokens .token .pos", "ts => ts.map(t => t.textContent)")
    assert shown == [display(t) for t in str_tokens]
    assert positions == [str(i) for i in range(len(str_tokens))]
    assert "␣" in shown and "↵" in shown  # spaces and newlines are visible


def test_head_thumbnails_for_all_layers_and_for_one(dashboard, dashboard_lensd):
    page = dashboard()
    cfg = api(dashboard_lensd, "/v1/models/induction-2l")["config"]
    assert page.locator("#heads .head").count() == cfg["n_layers"] * cfg["n_heads"]
    page.select_option("#layer", "1")
    wait_idle(page)
    heads = page.eval_on_selector_all("#heads .head span", "ss => ss.map(s => s.textContent)")
    assert heads == [f"L1H{h}" for h in range(cfg["n_heads"])]


def test_locking_a_head_shows_the_apis_pattern(dashboard, dashboard_lensd, shots):
    page = dashboard()
    run_prompt(page, INDUCTION_PROMPT)
    before = page.eval_on_selector("#focus", "c => c.toDataURL()")
    page.click('#heads .head[data-layer="1"][data-head="0"]')
    page.mouse.move(0, 0)  # off the thumbnails: the locked head stays
    assert "L1H0 (locked)" in page.text_content("#focus-title")
    assert page.eval_on_selector("#focus", "c => c.toDataURL()") != before
    assert page.locator("#heads .head.locked").count() == 1

    answer = api(dashboard_lensd, "/v1/models/induction-2l/attention", {"prompt": INDUCTION_PROMPT, "layers": [1]})
    pattern = tensor(answer["patterns"])[0, 0]  # [dest, src] of L1H0
    T = pattern.shape[0]
    assert int(focus_geometry(page)["tokens"]) == T
    rng = np.random.default_rng(0)
    cells = [(T - 1, T - 1), (T - 1, 0), (T // 2, 3)] + [tuple(sorted(rng.integers(0, T, 2))[::-1]) for _ in range(5)]
    for dest, src in cells:
        tip = hover_cell(page, int(dest), int(src))
        assert (int(tip["dest"]), int(tip["src"])) == (dest, src)
        assert float(tip["value"]) == pytest.approx(float(pattern[dest, src]), rel=1e-7, abs=1e-12)
        assert f"{float(pattern[dest, src]):.4f}" in tip["text"]
    masked = hover_cell(page, 0, T - 1)  # causal: the future is masked
    assert masked["text"].endswith("masked")
    shots(page, "induction-2l-L1H0-light")


def test_hover_previews_and_the_lock_survives_a_reload(dashboard):
    page = dashboard()
    page.click('#heads .head[data-layer="1"][data-head="2"]')
    page.hover('#heads .head[data-layer="0"][data-head="1"]')
    assert "L0H1 (preview)" in page.text_content("#focus-title")
    page.mouse.move(0, 0)
    assert "L1H2 (locked)" in page.text_content("#focus-title")
    page.select_option("#layer", "1")
    wait_idle(page)
    assert "head=L1H2" in page.url and "layer=1" in page.url
    page.reload()
    wait_idle(page)
    assert page.input_value("#layer") == "1"
    assert "L1H2 (locked)" in page.text_content("#focus-title")


def test_hovering_a_token_highlights_it_across_heads(dashboard):
    page = dashboard()
    run_prompt(page, INDUCTION_PROMPT)
    thumbs = page.eval_on_selector_all("#heads canvas", "cs => cs.map(c => c.toDataURL())")
    page.hover('#tokens .token[data-pos="30"]')
    assert page.locator("#tokens .token.hovered").count() == 1
    tints = page.eval_on_selector_all("#tokens .token", "ts => ts.map(t => t.style.background)")
    assert sum("linear-gradient" in t for t in tints) == len(tints)
    after = page.eval_on_selector_all("#heads canvas", "cs => cs.map(c => c.toDataURL())")
    assert all(a != b for a, b in zip(thumbs, after))  # every head's row and column 30 stand out


def test_predictions_equal_the_apis_top_k(dashboard, dashboard_lensd):
    page = dashboard()
    run_prompt(page, INDUCTION_PROMPT)
    answer = api(dashboard_lensd, "/v1/models/induction-2l/logits",
                 {"prompt": INDUCTION_PROMPT, "positions": [-1], "top_k": 10})
    ids = tensor(answer["top_k_ids"])[0, 0].tolist()
    probs = tensor(answer["top_k_probs"])[0, 0]
    items = page.eval_on_selector_all("#predictions li", "ls => ls.map(l => [l.dataset.id, l.dataset.prob])")
    assert [int(i) for i, _ in items] == ids
    assert np.allclose([float(p) for _, p in items], probs, rtol=1e-7, atol=0)
    assert page.text_content("#predictions li .tok") == display(chr(ids[0]))
    assert ids[0] == ord("a")  # the induction heads complete "m" -> "a" from the first sentence


def test_logit_difference_chart_and_head_heatmap(dashboard, dashboard_lensd, shots):
    page = dashboard()
    run_prompt(page, INDUCTION_PROMPT)  # the example answers: "a" against "e"
    cfg = api(dashboard_lensd, "/v1/models/induction-2l")["config"]
    want = api(dashboard_lensd, "/v1/models/induction-2l/logit_diff",
               {"prompt": INDUCTION_PROMPT, "answers": ["a", "e"], "attribution": ["accumulated_resid", "heads"]})
    points = page.eval_on_selector_all("#lens-chart circle.point",
                                       "ps => ps.map(p => [p.dataset.label, Number(p.dataset.value)])")
    # TL's accumulated_resid: 0_pre, 0_mid, ..., final_post; attention-only blocks have no resid_mid
    assert cfg["attn_only"] and len(points) == cfg["n_layers"] + 1
    assert [label for label, _ in points] == want["accumulated_resid"]["labels"]
    assert np.allclose([v for _, v in points], want["accumulated_resid"]["mean"], rtol=1e-7, atol=1e-7)
    cells = page.eval_on_selector_all("#head-attr .cell", "cs => cs.map(c => [c.dataset.label, Number(c.dataset.value)])")
    assert len(cells) == cfg["n_layers"] * cfg["n_heads"]
    assert np.allclose([v for _, v in cells], np.ravel(want["heads"]["grid"]), rtol=1e-7, atol=1e-7)
    assert re.search(r"= -?\d+\.\d{4}$", page.text_content("#logit-diff-value"))
    assert float(page.text_content("#logit-diff-value").split("=")[-1]) == pytest.approx(want["logit_diff"][0], abs=1e-4)
    page.click('#head-attr .cell[data-label="L1H1"]')  # a heatmap cell opens its head
    assert "L1H1 (locked)" in page.text_content("#focus-title")
    shots(page, "induction-2l-logit-diff-light")


def test_the_bracket_classifier(dashboard, dashboard_lensd, shots):
    page = dashboard(query="?model=brackets")
    assert page.input_value("#prompt") == "(()())"
    cfg = api(dashboard_lensd, "/v1/models/brackets")["config"]
    assert page.locator("#heads .head").count() == cfg["n_layers"] * cfg["n_heads"]
    assert page.locator("#lens-chart circle.point").count() == cfg["n_layers"] * 2 + 1  # 0_pre, 0_mid, ..., final_post
    assert "position 0" in page.text_content("#logit-diff-where")
    # the classifier reads position 0: its top prediction is the class
    logits = tensor(api(dashboard_lensd, "/v1/models/brackets/logits", {"prompt": "(()())", "positions": [0]})["logits"])[0, 0]
    assert page.eval_on_selector("#predictions li", "l => l.dataset.id") == str(int(np.argmax(logits)))
    mask = hover_cell(page, 0, 5)  # bidirectional: nothing is masked
    assert not mask["text"].endswith("masked")
    shots(page, "brackets-light")


def test_a_server_error_is_shown_as_its_message(dashboard, dashboard_lensd):
    page = dashboard()
    page.fill("#answer", "cat")  # three byte tokens, not one
    page.click("#logit-diff-form button")
    wait_idle(page)
    status, _, raw = dashboard_lensd.post("/v1/models/induction-2l/logit_diff",
                                {"prompt": page.input_value("#prompt"), "answers": ["cat", "e"]})
    message = json.loads(raw)["error"]["message"]
    assert status in (400, 422)
    assert page.is_visible("#error")
    assert message in page.text_content("#error")


def test_readable_in_dark_and_light_at_1280x800(dashboard, shots):
    colors = {}
    for scheme in ("light", "dark"):
        page = dashboard(color_scheme=scheme)
        run_prompt(page, INDUCTION_PROMPT)
        colors[scheme] = page.evaluate("""() => {
            const s = getComputedStyle(document.body);
            return [s.backgroundColor, s.color];
        }""")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # no sideways scrolling
        focus = page.locator("#focus").bounding_box()
        assert focus["y"] < 800  # the focused head starts on the first screen
        shots(page, f"induction-2l-{scheme}")
    luminance = {k: sum(int(x) for x in re.findall(r"\d+", v[0])[:3]) for k, v in colors.items()}
    assert luminance["dark"] < 150 < luminance["light"]
    assert colors["dark"][1] != colors["light"][1]


def test_activation_patching_view(dashboard, dashboard_lensd, shots):
    page = dashboard()
    clean, corrupted = page.input_value("#prompt"), page.input_value("#corrupted")
    cfg = api(dashboard_lensd, "/v1/models/induction-2l")["config"]
    page.select_option("#sweep", "resid_pre")
    page.click("#patch-form button[type=submit]")
    wait_idle(page)
    want = api(dashboard_lensd, "/v1/models/induction-2l/patch", {
        "sweep": "resid_pre", "clean": {"prompt": clean}, "corrupted": {"prompt": corrupted},
        "metric": {"answers": ["a", "e"], "normalize": True}})
    values = tensor(want["values"])
    cells = page.eval_on_selector_all("#patch-map .cell", "cs => cs.map(c => [c.dataset.label, Number(c.dataset.value)])")
    assert len(cells) == cfg["n_layers"] * values.shape[1]
    assert np.allclose([v for _, v in cells], values.ravel(), rtol=1e-6, atol=1e-6)
    assert cells[0][0] == "L0 pos 0"
    columns = page.eval_on_selector_all("#patch-map .label.col", "ls => ls.map(l => l.textContent)")
    assert columns == [f"{i} {display(t)}" for i, t in enumerate(want["axes"][1]["labels"])]
    assert page.eval_on_selector("#patch-progress", "p => p.value") == 1
    assert "patched runs" in page.text_content("#patch-status")
    shots(page, "induction-2l-patching-light")

    page.select_option("#sweep", "attn_head_out_all_pos")  # a head sweep: a cell opens its head
    page.click("#patch-form button[type=submit]")
    wait_idle(page)
    assert page.locator("#patch-map .cell").count() == cfg["n_layers"] * cfg["n_heads"]
    page.click('#patch-map .cell[data-label="L1H2"]')
    wait_idle(page)
    assert "L1H2 (locked)" in page.text_content("#focus-title")
