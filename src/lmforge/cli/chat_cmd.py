"""`lmforge chat`: talk with a chat model in a terminal or through a pipe, history kept."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import LMForgeError
from ..runtime import GENERATION_PRECISION
from .flags import examples
from .inference import (add_model_flags, add_sampling_flags, language_model,
                        load_model_tokenizer_config)

COMMANDS_HELP = """commands:
  /reset        forget the conversation (the system prompt stays)
  /save FILE    write the conversation to FILE as JSON ({"messages": [...]})
  /system TEXT  set the system prompt (/system alone removes it)
  /help         show this help
  /exit         quit (also /quit, Ctrl-D); Ctrl-C stops a reply
  //TEXT        send a message that starts with '/'"""


def register(sub) -> None:
    p = sub.add_parser(
        "chat", help="chat with a model in the terminal (history, streaming, /save)",
        description="Chat with an instruction-tuned model: each line you type is a user turn, "
                    "rendered with the model's chat template together with the conversation "
                    "so far, and the reply is streamed as it is generated. When the "
                    "conversation no longer fits the model's context, the oldest turns are "
                    "dropped, with a note. With piped input each line is a user turn and each "
                    "reply is printed; the chat ends at the end of the input.\n\n"
                    + COMMANDS_HELP,
        epilog=examples("lmforge chat --model SmolLM2-135M-Instruct.Q4_1.gguf",
                        'lmforge chat --model runs/sft/model --system "Answer briefly." --greedy',
                        "printf 'Hi!\\n/save chat.json\\n' | lmforge chat --model models/smollm2"))
    add_model_flags(p, precision=GENERATION_PRECISION)
    p.add_argument("--system", metavar="TEXT", help="system prompt at the start of the conversation")
    add_sampling_flags(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the one-token decoding steps: the first reply waits for "
                        "the compilation (tens of seconds on a CPU), later ones come faster")
    p.set_defaults(func=run)


def note(text: str) -> None:
    print(f"lmforge chat: {text}", file=sys.stderr, flush=True)


def read_line(interactive: bool) -> str | None:
    """The next input line, None at the end of the input (Ctrl-D); on a terminal a Ctrl-C at
    the prompt drops the line being typed."""
    while True:
        try:
            return input("> " if interactive else "")
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return None
        except KeyboardInterrupt:
            if not interactive:
                raise
            print(file=sys.stderr)


def run_command(session, line: str) -> bool:
    """Carry out a /command; False when it ends the chat."""
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/help":
        print(COMMANDS_HELP, flush=True)
    elif name == "/reset":
        session.reset()
        note("conversation cleared")
    elif name == "/save":
        if not rest:
            note("usage: /save FILE")
        else:
            try:
                path = session.save(rest)
                note(f"saved {len(session.messages)} messages to {path}")
            except LMForgeError as exc:
                note(f"error: {exc}")
    elif name == "/system":
        session.system = rest or None
        note(f"system prompt set to {rest!r}" if rest else "system prompt removed")
    else:
        note(f"unknown command {name}; /help lists the commands")
    return True


def reply(session, text: str) -> None:
    """Send ``text`` and stream the reply to stdout; Ctrl-C stops the reply, not the chat."""
    try:
        session.send(text, stream_to=sys.stdout)
    except KeyboardInterrupt:
        print(flush=True)
        note("reply stopped")
        return
    except LMForgeError as exc:
        note(f"error: {exc}")
        return
    print(flush=True)
    if session.last is not None and session.last.finish_reason != "stop":
        note(f"reply cut short ({session.last.finish_reason}: --max-new-tokens "
             f"{session.max_new_tokens} or the model's context)")


def run(args: argparse.Namespace) -> int:
    from ..generation.chat import ChatSession, require_chat_template
    from ..generation.precision import cast_for_inference
    from ..generation.sampling import check_sampling_args
    check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                        args.repetition_penalty)
    model, tokenizer, tok_cfg = load_model_tokenizer_config(args)
    model = language_model(model, args, "chat", "a chat language model")
    require_chat_template(tokenizer, tok_cfg, args.model)
    cast_for_inference(model, args.precision, 1)  # cast (and time "auto") before the first turn
    session = ChatSession(model, tokenizer, tok_cfg, system=args.system,
                          max_new_tokens=args.max_new_tokens, precision=args.precision,
                          notify=note, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                          greedy=args.greedy, seed=args.seed, compile=args.compile)
    interactive = sys.stdin.isatty()
    if interactive:
        try:  # importing readline gives input() line editing and the turns' history
            importlib.import_module("readline")
        except ImportError:
            pass
        note(f"chatting with {args.model}; /help for commands, /exit or Ctrl-D to quit")
    while (line := read_line(interactive)) is not None:
        text = line.strip()
        if not text:
            continue
        if text.startswith("/") and not text.startswith("//"):
            if not run_command(session, text):
                break
            continue
        reply(session, text.removeprefix("/"))
    return 0
