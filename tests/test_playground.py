"""The web playground of `lmforge serve` (``GET /``) in a real headless Chromium.

Playwright drives Debian's ``chromium`` (``executable_path``: Playwright's own browser download
is not needed). Live servers run on loopback in background threads on the tiny models of
conftest (a random decoder given a chat template, the tiny fine-tuned classification, NER and QA
runs, the tiny MLM encoder) and stop at the end of their fixtures. Screenshots are saved under
each test's tmp_path. Skipped, saying why, only where Playwright or Chromium is missing.
"""

from __future__ import annotations

import re
import shutil
import time

import httpx
import pytest

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="needs the playwright package (pip install -e '.[dev]')")

from lmforge.hub import load_model  # noqa: E402
from lmforge.serving.app import ServeOptions  # noqa: E402
from lmforge.serving.served import ServedModel  # noqa: E402
from lmforge.serving.server import running_server  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome",
                                                 "google-chrome-stable"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH: apt-get install "
                                                         "chromium (.ci/run installs it)")

TIMEOUT_MS = 30_000
# Seconds added to each decoding step of the decoder's server, so that streaming is seen in stages.
PACE = {"seconds": 0.05}
# A short chat template: the tiny decoder's context is 64 tokens.
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, timeout=TIMEOUT_MS,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def tiny_decoder(tiny_models) -> ServedModel:
    model, tok, tok_cfg = load_model(tiny_models / "gpt")
    return ServedModel(model.eval(), tok, {**tok_cfg, "chat_template": TEMPLATE}, "tiny-gpt",
                       precision="fp32", max_batch=4)


@pytest.fixture(scope="module")
def decoder_server(tiny_models):
    served = tiny_decoder(tiny_models)
    with running_server(served, options=ServeOptions(max_tokens=32), timeout=60) as url:
        observe = served.engine.stats.on_step  # called on the decoding thread after each step

        def paced(seconds: float, batch: int) -> None:
            observe(seconds, batch)
            time.sleep(PACE["seconds"])
        served.engine.stats.on_step = paced
        yield url


def running_sequences(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return float(re.search(r"^lmforge_running_sequences (\S+)$", text, re.M).group(1))


def open_playground(page, url: str):
    page.goto(url + "/", timeout=TIMEOUT_MS)
    page.wait_for_selector("body[data-ready=true]")


def visible_tabs(page) -> list[str]:
    return page.eval_on_selector_all("#tabs button:not([hidden])", "bs => bs.map(b => b.dataset.tab)")


def test_the_page_is_self_contained(decoder_server):
    r = httpx.get(decoder_server + "/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "<script>" in html and "<style>" in html
    for external in ("http://", "https://", "//cdn", "<script src", "<link rel=\"stylesheet\""):
        assert external not in html, f"the playground loads something from outside: {external}"


def test_chat_streams_a_reply_and_completion_colours_tokens(page, decoder_server, tmp_path):
    open_playground(page, decoder_server)
    assert visible_tabs(page) == ["chat", "completion"]  # no task views for a decoder
    assert page.inner_text("#model-name") == "tiny-gpt"
    assert page.is_visible("#panel-chat")

    # Chat: record the reply's text each time it changes, to see it arrive in stages.
    page.evaluate("""() => {
        window.__stages = [];
        new MutationObserver(() => {
            const c = document.querySelector('.msg.assistant .content');
            const t = c ? c.textContent : '';
            if (t && t !== window.__stages[window.__stages.length - 1]) window.__stages.push(t);
        }).observe(document.getElementById('chat-messages'), {childList: true, characterData: true, subtree: true});
    }""")
    page.fill("#chat-system", "be brief")
    page.fill("#chat-max-tokens", "12")
    page.fill("#chat-temperature", "0")
    page.fill("#chat-input", "to be or not")
    page.click("#chat-send")
    bubble = page.locator(".msg.assistant").first
    page.wait_for_function("document.querySelector('.msg.assistant .content').textContent.length > 0")
    page.screenshot(path=tmp_path / "chat_streaming.png")
    page.wait_for_selector(".msg.assistant[data-done=true]")
    page.screenshot(path=tmp_path / "chat.png")
    reply = bubble.locator(".content").text_content()
    assert not page.is_visible("#chat-error")
    # The streamed reply is the server's whole answer to the same greedy request.
    whole = httpx.post(decoder_server + "/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "to be or not"}],
        "max_tokens": 12, "temperature": 0}).json()
    assert reply == whole["choices"][0]["message"]["content"] and reply.strip()
    stages = page.evaluate("window.__stages")
    assert len(stages) >= 2 and stages[-1] == reply, stages  # partial texts, then the whole
    assert all(reply.startswith(stage) for stage in stages)
    assert "12 tokens" in bubble.locator(".meta").text_content()
    assert page.is_enabled("#chat-send") and not page.is_enabled("#chat-stop")

    # A second turn sends the conversation so far.
    page.fill("#chat-max-tokens", "4")
    page.fill("#chat-input", "and then")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.press("#chat-input", "Enter")
    assert [m["role"] for m in sent.value.post_data_json["messages"]] == ["system", "user", "assistant", "user"]
    assert sent.value.post_data_json["messages"][2]["content"] == reply
    page.wait_for_selector(".msg.assistant[data-done=true] >> nth=1")
    assert not page.is_visible("#chat-error"), page.inner_text("#chat-error")

    # Stop aborts the request and frees its decoding slot at once.
    page.click("#chat-reset")
    PACE["seconds"] = 0.25  # 32 tokens: 8 s, to stop well before the end
    page.fill("#chat-max-tokens", "32")
    page.fill("#chat-input", "and then")
    page.press("#chat-input", "Enter")
    page.wait_for_function("document.querySelector('.msg.assistant .content')?.textContent.length > 0")
    page.click("#chat-stop")
    page.wait_for_selector(".msg.assistant[data-done=true]", timeout=5_000)
    PACE["seconds"] = 0.05
    assert not page.is_visible("#chat-error"), page.inner_text("#chat-error")
    assert "stopped" in page.locator(".msg.assistant .meta").text_content()
    deadline = time.time() + 10
    while running_sequences(decoder_server) and time.time() < deadline:
        time.sleep(0.1)
    assert running_sequences(decoder_server) == 0
    page.screenshot(path=tmp_path / "chat_stopped.png")

    page.click("#chat-reset")
    assert page.locator(".msg").count() == 0

    # Completion with log-probabilities: one coloured span per generated token.
    page.click("#tabs button[data-tab=completion]")
    assert page.is_visible("#panel-completion") and not page.is_visible("#panel-chat")
    page.fill("#cmp-prompt", "to be or not to")
    page.fill("#cmp-max-tokens", "8")
    page.fill("#cmp-temperature", "0")
    page.fill("#cmp-top-n", "3")
    page.check("#cmp-logprobs")
    page.click("#cmp-run")
    page.wait_for_selector("#cmp-output[data-done=true]")
    tokens = page.locator("#cmp-output .tok")
    assert tokens.count() == 8
    whole = httpx.post(decoder_server + "/v1/completions", timeout=30, json={
        "prompt": "to be or not to", "max_tokens": 8, "temperature": 0, "logprobs": 3}).json()
    lp = whole["choices"][0]["logprobs"]
    spans = tokens.evaluate_all("""ts => ts.map(t => ({text: t.textContent, p: +t.dataset.p,
        top: JSON.parse(t.dataset.top), bg: getComputedStyle(t).backgroundColor}))""")
    assert [s["text"] for s in spans] == lp["tokens"]
    for span, logprob, top in zip(spans, lp["token_logprobs"], lp["top_logprobs"]):
        assert span["p"] == pytest.approx(2.718281828 ** logprob, rel=1e-3, abs=1e-6)
        assert span["bg"].startswith("rgb(") and span["bg"] != "rgba(0, 0, 0, 0)"
        assert span["top"] == pytest.approx(top)
    tokens.first.hover()
    page.wait_for_selector("#tooltip:not([hidden])")
    assert page.locator("#tooltip tr").count() == 3
    assert page.is_visible("#cmp-legend")
    assert "8 generated tokens" in page.inner_text("#cmp-stats")
    page.screenshot(path=tmp_path / "completion.png")

    # The server's errors are shown in the page.
    page.fill("#cmp-max-tokens", "1000")
    page.click("#cmp-run")
    page.wait_for_selector("#cmp-error:not([hidden])")
    assert "at most 32" in page.inner_text("#cmp-error")
    page.screenshot(path=tmp_path / "error.png")


def test_the_probability_colours_run_from_red_to_green(page, decoder_server):
    open_playground(page, decoder_server)
    hues = page.evaluate("""() => {
        const out = document.getElementById('cmp-output');
        return [0.01, 0.5, 0.99].map(p => {
            const s = document.createElement('span');
            s.className = 'tok'; s.style.background = `hsl(${Math.round(120 * p)}, 70%, 70%)`;
            out.append(s);
            const [r, g] = getComputedStyle(s).backgroundColor.match(/\\d+/g).map(Number);
            return r - g;
        });
    }""")
    assert hues[0] > 0 > hues[2]  # red-ish when unlikely, green-ish when likely


def test_an_api_key_is_asked_for_and_kept(page, tiny_models, tmp_path):
    with running_server(tiny_decoder(tiny_models), options=ServeOptions(api_key="sesame"),
                        timeout=60) as url:
        page.goto(url + "/")
        page.wait_for_selector("#global-error:not([hidden])")
        assert "API key" in page.inner_text("#global-error")
        assert visible_tabs(page) == []
        page.fill("#api-key", "sesame")
        page.press("#api-key", "Enter")  # change event: reload the models
        page.wait_for_selector("body[data-ready=true]")
        assert visible_tabs(page) == ["chat", "completion"] and not page.is_visible("#global-error")
        assert page.evaluate("localStorage.getItem('lmforge.apiKey')") == "sesame"
        page.click("#tabs button[data-tab=completion]")
        page.fill("#cmp-max-tokens", "3")
        page.fill("#cmp-prompt", "to be")
        page.click("#cmp-run")  # sent with the Bearer key
        page.wait_for_selector("#cmp-output[data-done=true]")
        assert not page.is_visible("#cmp-error")
        page.reload()
        page.wait_for_selector("body[data-ready=true]")  # the key came back from localStorage
        assert page.input_value("#api-key") == "sesame"


# ---- task models -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task_server(tiny_models, tiny_runs):
    """A live server for a task model, started on first use: url_of(capability)."""
    import contextlib
    paths = {"classify": tiny_runs["classification"], "token-classify": tiny_runs["token-classification"],
             "qa": tiny_runs["qa"], "fill-mask": tiny_models / "bert"}
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}

        def url_of(capability: str) -> str:
            if capability not in urls:
                served = ServedModel.load(paths[capability], precision="fp32")
                urls[capability] = stack.enter_context(running_server(served, timeout=60))
            return urls[capability]
        yield url_of


def test_classify_shows_the_label_and_its_scores(page, task_server, tmp_path):
    open_playground(page, task_server("classify"))
    assert visible_tabs(page) == ["classify"] and page.is_visible("#panel-classify")
    page.fill("#cls-text", "a good film")
    page.click("#cls-run")
    page.wait_for_selector("#cls-result .verdict")
    assert page.get_attribute("#cls-result .verdict", "data-label") == "pos"
    assert page.locator("#cls-result .bar").count() == 2
    assert page.inner_text("#cls-result .bar.best .name") == "pos"
    page.screenshot(path=tmp_path / "classify.png")


def test_ner_highlights_entities_at_their_offsets(page, task_server, tmp_path):
    open_playground(page, task_server("token-classify"))
    assert visible_tabs(page) == ["ner"]
    page.fill("#ner-text", "today grace went to oslo")
    page.click("#ner-run")
    page.wait_for_selector("#ner-result mark.ent")
    marks = page.eval_on_selector_all("#ner-result mark.ent",
                                      "ms => ms.map(m => [m.dataset.type, m.firstChild.textContent])")
    assert sorted(marks) == [["LOC", "oslo"], ["PER", "grace"]]
    assert page.inner_text("#ner-result .rich").startswith("today grace")
    page.screenshot(path=tmp_path / "ner.png")


def test_qa_highlights_the_answer_in_the_context(page, task_server, tmp_path):
    open_playground(page, task_server("qa"))
    assert visible_tabs(page) == ["qa"]
    page.fill("#qa-question", "where does ada live ?")
    page.fill("#qa-context", "ada lives in rome .")
    page.click("#qa-run")
    page.wait_for_selector("#qa-result mark.answer")
    assert page.inner_text("#qa-result mark.answer") == "rome"
    assert page.get_attribute("#qa-result .verdict", "data-answer") == "rome"
    page.screenshot(path=tmp_path / "qa.png")


def test_fill_mask_lists_the_predictions(page, task_server, tmp_path):
    url = task_server("fill-mask")
    open_playground(page, url)
    assert visible_tabs(page) == ["fillmask"]  # an encoder: embeddings have no view
    page.click("#tabs button[data-tab=fillmask]")
    page.fill("#fm-text", "to be or not to ")
    page.click("#fm-insert")
    assert page.input_value("#fm-text") == "to be or not to [MASK]"
    page.fill("#fm-top-k", "3")
    page.click("#fm-run")
    page.wait_for_selector("#fm-result .bar")
    want = httpx.post(url + "/v1/fill-mask", json={"input": "to be or not to [MASK]", "top_k": 3},
                      timeout=30).json()["data"][0]["masks"][0]
    names = page.eval_on_selector_all("#fm-result .bar .name", "ns => ns.map(n => n.textContent)")
    assert names == [g["token_str"] for g in want]
    page.screenshot(path=tmp_path / "fill_mask.png")
