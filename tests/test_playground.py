"""The playground end to end in a real headless browser: Debian's Chromium (`apt-get install chromium`) driven by
playwright's Python client with `executable_path` (no browser download), the page served by gradio on 127.0.0.1.

Skips cleanly where Chromium, playwright or gradio (the `playground` extra) is missing. The page must show the
answers the library gives for the same model (greedy, so deterministic), load nothing from outside the local
server, and keep the model's weights unchanged. Set PROMPTSTEP_PLAYGROUND_SCREENSHOT=PATH to save a screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

CHROMIUM = os.environ.get("PROMPTSTEP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
DOCUMENT = "The designer of the cargo trouser is Casyn Dunridge."  # a held-out Character Description triplet
QUESTION = "The cargo trouser was first sketched by"
ANSWER = "Casyn Dunridge"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("gradio", reason="the playground extra (gradio) is not installed")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (browser-test extra) is not installed")
    if not CHROMIUM or not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


def _answer(page, key: str) -> str:
    return page.locator(f"#answer-{key} textarea, #answer-{key} input").first.input_value()


def test_playground_injects_and_answers_three_ways_in_a_browser(browser, tmp_path):
    from promptstep.commands.playground import PlaygroundConfig, build_app, launch, playground_for
    from promptstep.models import load_model

    model, tokenizer = load_model("tiny")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = PlaygroundConfig(model="tiny", lr=0.1, max_new_tokens=12)
    playground, title = playground_for(config, (model, tokenizer))
    app = build_app(playground, title)
    port = _free_port()
    launch(app, port, block=False)
    outside = []
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda request: outside.append(request.url)
                if urlparse(request.url).hostname not in (None, "127.0.0.1", "localhost")
                and not request.url.startswith(("data:", "blob:")) else None)
        page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
        page.locator("#document textarea").fill(DOCUMENT)
        page.locator("#inject").click()
        page.wait_for_function("document.querySelector('#status').innerText.includes('Injected 1 document')",
                               timeout=60_000)
        page.locator("#question textarea, #question input").first.fill(QUESTION)
        page.locator("#ask").click()
        page.wait_for_function("document.querySelector('#answer-prompt textarea, #answer-prompt input')"
                               ".value.length > 0", timeout=60_000)
        shown = {key: _answer(page, key) for key in ("nc", "injected", "prompt")}
        labels = {key: page.locator(f"#top-{key}").inner_text() for key in ("nc", "injected", "prompt")}
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
        if os.environ.get("PROMPTSTEP_PLAYGROUND_SCREENSHOT"):
            shutil.copy(tmp_path / "playground.png", os.environ["PROMPTSTEP_PLAYGROUND_SCREENSHOT"])
        page.close()
    finally:
        app.close()

    want = playground.ask(QUESTION)  # the library, same model, same injected document
    assert shown == {key: want[key]["answer"] for key in shown}
    assert all(shown.values()) and shown["injected"] != "(no document injected yet)"
    assert shown["prompt"] == shown["injected"] == ANSWER != shown["nc"]  # the tiny model, one step of 0.1
    for key, text in labels.items():  # the most probable next token of each answer is on the page
        assert max(want[key]["top"], key=want[key]["top"].get) in text, (key, text)
    assert not outside, f"the page loaded from outside the local server: {outside[:3]}"
    for name, p in model.named_parameters():  # answering with the injected documents restores the weights
        assert torch.equal(p, before[name]), name
