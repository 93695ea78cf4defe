"""`lmforge generate`: continue prompts with a trained model, streaming text as it is produced."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import LMForgeError
from ..generation import TextCompletion, generate_text
from ..runtime import GENERATION_PRECISION
from .flags import examples
from .inference import (add_model_flags, add_sampling_flags, language_model,
                        load_model_tokenizer_config, read_text_file)

SEPARATOR = "-" * 40


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate text from a trained model",
        description="Continue one or more prompts with a trained model (an encoder-decoder "
                    "reads each prompt as its input and writes its output). A single prompt is "
                    "streamed to stdout as it is generated; several print one completion each. "
                    "Generation stops at the model's EOS and end-of-turn tokens; with --chat "
                    "each prompt is a user message to a chat model, and only the reply is "
                    "printed (`lmforge chat` keeps a conversation going).",
        epilog=examples('lmforge generate --model runs/shakespeare --prompt "ROMEO:" --max-new-tokens 100',
                        'lmforge generate --model models/gpt2 --prompt "The meaning of life is" --greedy',
                        "lmforge generate --model runs/t5 --prompts-file inputs.txt --num-beams 4 --json",
                        'lmforge generate --model SmolLM2-135M-Instruct.Q4_1.gguf --chat '
                        '--prompt "What is the capital of France?" --greedy'))
    add_model_flags(p, precision=GENERATION_PRECISION)
    p.add_argument("--prompt", action="extend", nargs="+", metavar="TEXT",
                   help="prompt text (several for a batch); '-' reads the prompt from stdin")
    p.add_argument("--prompts-file", metavar="FILE",
                   help="a file of prompts, one per line (blank lines skipped)")
    p.add_argument("--chat", action="store_true",
                   help="each prompt is a user message, rendered with the model's chat template "
                        "(a model without one is refused)")
    p.add_argument("--system", metavar="TEXT",
                   help="with --chat: a system message before each prompt")
    add_sampling_flags(p)
    p.add_argument("--num-beams", type=int, default=1,
                   help="beam search with this many beams (> 1; sampling flags are then unused)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam search: score = log-probability / length**PENALTY; > 0 favours "
                        "longer outputs, < 0 shorter")
    p.add_argument("--stop", action="extend", nargs="+", metavar="STR",
                   help="stop when the completion contains STR (cut before it); in bash, "
                        "$'\\n\\n' gives a blank line")
    p.add_argument("--num-samples", type=int, default=1,
                   help="completions per prompt")
    p.add_argument("--no-stream", action="store_true",
                   help="print a single completion only when it is finished")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile a decoder's one-token steps (sampling and greedy): the "
                        "first call compiles (tens of seconds on a CPU), later tokens come faster")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per completion (JSONL): prompt, sample, completion, ...")
    p.set_defaults(func=run)


def collect_prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from --prompt (with '-' for stdin) and --prompts-file, in that order."""
    prompts = [sys.stdin.read().removesuffix("\n") if p == "-" else p for p in args.prompt or []]
    if args.prompts_file:
        lines = read_text_file(args.prompts_file, "prompts file").splitlines()
        from_file = [line for line in lines if line.strip()]
        if not from_file:
            raise LMForgeError(f"prompts file {args.prompts_file} has no prompts")
        prompts += from_file
    if not prompts:
        raise LMForgeError("no prompt: pass --prompt TEXT, --prompts-file FILE, "
                           "or --prompt - to read stdin")
    if any(p == "" for p in prompts):
        raise LMForgeError("empty prompt: give some text to continue")
    return prompts


class EchoFirst:
    """Stdout for a streamed completion that writes the prompt just before the first text, so
    nothing reaches stdout when generation refuses its input."""

    def __init__(self, prompt: str):
        self.pending = prompt

    def write(self, text: str) -> None:
        sys.stdout.write(self.pending + text)
        self.pending = ""

    def flush(self) -> None:
        sys.stdout.flush()


def print_completions(prompts: list[str], completions: list[TextCompletion], as_json: bool,
                      samples: int, echo_prompt: bool = True) -> None:
    for i, done in enumerate(completions):
        prompt = prompts[i // samples]
        if as_json:
            print(json.dumps({"prompt": prompt, "sample": i % samples, "completion": done.text,
                              "finish_reason": done.finish_reason,
                              "new_tokens": len(done.token_ids)}, ensure_ascii=False))
            continue
        if i:
            print(SEPARATOR)
        print(prompt + done.text if echo_prompt else done.text)


def chat_prompts(prompts: list[str], args: argparse.Namespace, tokenizer, tok_cfg: dict) -> list[str]:
    """Each prompt as a user message (after --system), rendered with the model's chat template."""
    from ..generation.chat import chat_prompt
    system = [{"role": "system", "content": args.system}] if args.system else []
    return [chat_prompt(tokenizer, tok_cfg, [*system, {"role": "user", "content": p}], args.model)
            for p in prompts]


def run(args: argparse.Namespace) -> int:
    if args.num_samples < 1:
        raise LMForgeError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.num_beams < 1:
        raise LMForgeError(f"--num-beams must be at least 1, got {args.num_beams}")
    if args.system is not None and not args.chat:
        raise LMForgeError("--system needs --chat")
    prompts = collect_prompts(args)
    model, tokenizer, tok_cfg = load_model_tokenizer_config(args)
    model = language_model(model, args, "generate", "a language model (decoder, "
                           "encoder-decoder or LSTM)")
    inputs = chat_prompts(prompts, args, tokenizer, tok_cfg) if args.chat else prompts
    # An encoder-decoder's output is not a continuation of its input, nor a chat reply of the
    # rendered conversation: print the output alone.
    echo = not (model.is_seq2seq or args.chat)
    batch = [p for p in inputs for _ in range(args.num_samples)]
    streaming = len(batch) == 1 and not (args.no_stream or args.json)
    stream = EchoFirst(prompts[0] if echo else "") if streaming else None
    completions = generate_text(
        model, tokenizer, batch, args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        greedy=args.greedy, stop_strings=args.stop, seed=args.seed,
        stream_to=stream, precision=args.precision, num_beams=args.num_beams,
        length_penalty=args.length_penalty, compile=args.compile, tokenizer_config=tok_cfg)
    if stream:
        print(stream.pending)  # the prompt, if the completion was empty
    else:
        print_completions(prompts, completions, args.json, args.num_samples, echo)
    return 0
