"""``pipeline(task, model=...)``: one-line inference shaped as transformers' pipelines return it.

    clf = lmforge.pipeline("sentiment-analysis", model="runs/sst2")
    clf("a gripping film")                    # [{"label": "1", "score": 0.98}]
    lmforge.pipeline("fill-mask", model="runs/bert")("The capital of France is [MASK].")
    lmforge.pipeline("text-generation", model="runs/gpt")("Once", max_new_tokens=20)
    qa = lmforge.pipeline("question-answering", model="runs/squad")
    qa(question="Who wrote it?", context="Ada wrote it.")  # {"answer", "score", "start", "end"}

Tasks and the models they take:

- ``text-generation``: a decoder (or LSTM) language model: ``[{"generated_text"}]``, the prompt
  included (``return_full_text=False`` leaves it out). Sampling as `lmforge generate` samples
  (temperature 0.8, top-k 200, 200 new tokens); ``do_sample=False`` is greedy; generation stops
  at the model's EOS and end-of-turn tokens.
- ``text2text-generation``, ``summarization``, ``translation``: an encoder-decoder (greedy), or
  a run fine-tuned with ``--task seq2seq`` (its recorded template and generation options):
  ``[{"generated_text" | "summary_text" | "translation_text"}]``.
- ``fill-mask``: an encoder with a masked-LM head: ``[{"score", "token", "token_str",
  "sequence"}]`` per mask (top_k=5).
- ``text-classification`` (``sentiment-analysis``): a fine-tuned classifier:
  ``[{"label", "score"}]`` (``top_k=None``: every label, best first); a regression head gives
  its value as ``score`` with label ``LABEL_0``. Inputs: a str, a ``{"text", "text_pair"}``
  dict, or a list of them.
- ``token-classification`` (``ner``): a fine-tuned tagger: entities ``{"entity_group",
  "score", "word", "start", "end"}`` per text (words whitespace-split; score: the mean
  probability of the entity's word tags, as transformers' "simple" aggregation).
- ``question-answering``: a fine-tuned extractive QA model: ``{"answer", "score", "start",
  "end"}`` (score: lmforge's start + end logit, not a probability).
- ``feature-extraction``: any model: the final hidden state of every token, nested lists
  ``[1][tokens][d]`` per text (``return_tensors=True``: a tensor).

A str input gives one result, a list a list of results, as in transformers. A task the model
cannot do is one ConfigError naming what it is. ``precision``: the generation tasks default to
"auto" (weights cast once to the faster of fp32 and bf16, measured), the others to "fp32", as
the commands do.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer

from .api import PRECISION, load
from .generation.sampling import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from .errors import ConfigError, DataError
from .runtime import GENERATION_PRECISION

ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
# lmforge generate's defaults, so a pipeline samples as the command does.
GENERATE_DEFAULTS = dict(max_new_tokens=200, temperature=DEFAULT_TEMPERATURE, top_k=DEFAULT_TOP_K)


def describe(model: torch.nn.Module) -> str:
    """What a model is, for error messages: "a classification model (fine-tuned encoder)"."""
    arch = model.kind
    spec = getattr(model, "spec", None)
    if spec is not None:
        return f"a {spec.task} model (fine-tuned {arch})"
    if model.is_encoder and not model.has_mlm_head():
        return "an encoder without a masked-LM head"
    return {"decoder": "a decoder language model", "lstm": "an LSTM language model",
            "encoder": "an encoder with a masked-LM head",
            "encoder-decoder": "an encoder-decoder model"}.get(arch, f"an {arch} model")


class Pipeline:
    """A loaded model, its tokenizer and task; call it on a str or a list of str."""

    task = ""
    needs = ""  # what the task needs, for the error message
    precision = PRECISION  # the default: scoring precision, "auto" for the generation tasks

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, tokenizer_config: dict,
                 path: Path | None, precision: str | None, **defaults):
        self.model, self.tokenizer, self.tokenizer_config = model, tokenizer, tokenizer_config
        self.path, self.defaults = path, defaults
        self.precision = precision or self.precision
        if not self.supports(model):
            raise ConfigError(f"{self.task} needs {self.needs}; {self.path or 'this model'} is "
                              f"{describe(model)}")

    @classmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        raise NotImplementedError

    def __call__(self, inputs, **kwargs):
        one = isinstance(inputs, (str, dict))
        items = [inputs] if one else list(inputs)
        if not items:
            raise DataError(f"{self.task}: no inputs")
        out = self.run(items, **{**self.defaults, **kwargs})
        return out[0] if one else out

    def run(self, items: list, **kwargs) -> list:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<lmforge {self.task} pipeline: {describe(self.model)}>"


class TaskPipeline(Pipeline):
    """Pipelines of fine-tuned heads: they run the head's task objective, as `lmforge predict`."""

    head: tuple[str, ...] = ()

    @classmethod
    def supports(cls, model) -> bool:
        return getattr(model, "spec", None) is not None and model.spec.task in cls.head

    def predict(self, items: list, batch_size: int = 32) -> list[dict]:
        from .tasks.inference import examples_file, predict_file, task_objective
        from .runtime import autocast, resolve_precision
        objective = task_objective(self.model, self.tokenizer, self.tokenizer_config, self.path)
        device = next(self.model.parameters()).device
        precision = resolve_precision(self.precision, device)
        with tempfile.TemporaryDirectory(prefix="lmforge-pipeline-") as tmp:
            return predict_file(self.model, objective, examples_file(items, tmp), batch_size,
                                device, lambda: autocast(device, precision))


class TextClassification(TaskPipeline):
    task, needs, head = "text-classification", "a fine-tuned classifier", ("classification", "regression")

    def run(self, items, top_k: int | None = 1, batch_size: int = 32, **_):
        results = []
        for p in self.predict(items, batch_size):
            if "score" in p and "probabilities" not in p:  # a regression head: its value
                results.append([{"label": "LABEL_0", "score": p["score"]}])
                continue
            ranked = sorted(p["probabilities"].items(), key=lambda kv: -kv[1])
            results.append([{"label": k, "score": v} for k, v in ranked[:top_k]])
        if top_k == 1:  # transformers: one dict per input
            return [r[0] for r in results]
        return results

    def __call__(self, inputs, **kwargs):
        out = super().__call__(inputs, **kwargs)
        return [out] if isinstance(out, dict) else out  # a str gives [{"label", "score"}]


class TokenClassification(TaskPipeline):
    task, needs, head = "token-classification", "a fine-tuned token classifier (NER)", ("token-classification",)

    def run(self, items, batch_size: int = 32, **_):
        return [[{"entity_group": e["type"], "score": e["score"], "word": e["text"],
                  "start": e["start"], "end": e["end"]} for e in p["entities"]]
                for p in self.predict(items, batch_size)]


class QuestionAnswering(TaskPipeline):
    task, needs, head = "question-answering", "a fine-tuned extractive QA model", ("qa",)

    def __call__(self, inputs=None, *, question: str | Sequence[str] | None = None,
                 context: str | Sequence[str] | None = None, **kwargs):
        if inputs is None:
            if question is None or context is None:
                raise DataError("question-answering needs question= and context=")
            if isinstance(question, str) != isinstance(context, str):
                raise DataError("question and context must both be a str or both lists")
            if isinstance(question, str):
                inputs = {"question": question, "context": context}
            else:
                if len(question) != len(context):
                    raise DataError(f"{len(question)} questions for {len(context)} contexts")
                inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
        return super().__call__(inputs, **kwargs)

    def run(self, items, batch_size: int = 32, **_):
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not {"question", "context"} <= set(item):
                raise DataError(f"question-answering input {i + 1} needs a question and a context")
        items = [{"id": str(i), **item} for i, item in enumerate(items)]
        return [{"score": p["score"], "start": p["start"], "end": p["end"], "answer": p["answer"]}
                for p in self.predict(items, batch_size)]


class TextGeneration(Pipeline):
    task, needs = "text-generation", "a decoder or LSTM language model (no task head)"
    precision = GENERATION_PRECISION

    @classmethod
    def supports(cls, model) -> bool:
        return getattr(model, "spec", None) is None and model.is_decoder

    def run(self, items, max_new_tokens: int = GENERATE_DEFAULTS["max_new_tokens"],
            temperature: float = GENERATE_DEFAULTS["temperature"],
            top_k: int | None = GENERATE_DEFAULTS["top_k"], top_p: float | None = None,
            do_sample: bool = True, num_return_sequences: int = 1, return_full_text: bool = True,
            repetition_penalty: float = 1.0, num_beams: int = 1, seed: int | None = None,
            stop: Sequence[str] | None = None, **_):
        from .generation.text import generate_text
        if not all(isinstance(p, str) for p in items):
            raise DataError(f"{self.task} takes a str or a list of str")
        prompts = [p for p in items for _ in range(num_return_sequences)]
        done = generate_text(self.model, self.tokenizer, prompts, max_new_tokens,
                             temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty,
                             greedy=not do_sample or temperature == 0, stop_strings=stop,
                             seed=seed, precision=self.precision, num_beams=num_beams,
                             tokenizer_config=self.tokenizer_config)
        n = num_return_sequences
        return [[{"generated_text": (p if return_full_text else "") + c.text} for c in done[i * n:(i + 1) * n]]
                for i, p in enumerate(items)]


class Text2TextGeneration(Pipeline):
    task, needs, key = "text2text-generation", "an encoder-decoder model (T5, BART)", "generated_text"
    precision = GENERATION_PRECISION

    @classmethod
    def supports(cls, model) -> bool:
        return getattr(model, "spec", None) is None and model.is_seq2seq

    def run(self, items, max_new_tokens: int | None = None, num_beams: int | None = None,
            batch_size: int = 32, **_):
        if not all(isinstance(p, str) for p in items):
            raise DataError(f"{self.task} takes a str or a list of str")
        from .tasks.inference import headless_task_options
        task, _ = headless_task_options(str(self.path) if self.path else None, None, {})
        if task == "seq2seq":  # a fine-tuned run: its template and generation options
            from .generation.precision import cast_for_inference
            from .tasks.inference import examples_file, predict_file, task_objective
            objective = task_objective(self.model, self.tokenizer, self.tokenizer_config, self.path,
                                       max_new_tokens=max_new_tokens, num_beams=num_beams)
            model = cast_for_inference(self.model, self.precision, min(batch_size, len(items)))
            device = next(model.parameters()).device
            with tempfile.TemporaryDirectory(prefix="lmforge-pipeline-") as tmp:
                texts = [p["generated"] for p in predict_file(
                    model, objective, examples_file(items, tmp), batch_size, device,
                    contextlib.nullcontext)]
        else:
            from .generation.text import generate_text
            texts = [c.text for c in generate_text(
                self.model, self.tokenizer, items, max_new_tokens or GENERATE_DEFAULTS["max_new_tokens"],
                greedy=True, num_beams=num_beams or 1, precision=self.precision,
                tokenizer_config=self.tokenizer_config)]
        return [[{self.key: t}] for t in texts]


class Summarization(Text2TextGeneration):
    task, key = "summarization", "summary_text"


class Translation(Text2TextGeneration):
    task, key = "translation", "translation_text"


class FillMask(Pipeline):
    task, needs = "fill-mask", "an encoder with a masked-LM head (e.g. a bert-mini run with --objective mlm)"

    @classmethod
    def supports(cls, model) -> bool:
        return (getattr(model, "spec", None) is None and model.is_encoder
                and model.has_mlm_head())

    def run(self, items, top_k: int = 5, **_):
        from .evaluation.fill_mask import fill_in, fill_mask
        out = []
        for text in items:
            if not isinstance(text, str):
                raise DataError(f"{self.task} takes a str or a list of str")
            masks = fill_mask(self.model, self.tokenizer, text, top_k=top_k, precision=self.precision)
            if not masks:
                raise DataError(f"no mask token in {text[:40]!r}: write [MASK] (or <mask>) where a "
                                "word is missing")
            per_mask = [[{"score": p.prob, "token": p.token_id,
                          "token_str": self.tokenizer.decode([p.token_id]).strip() or p.token,
                          "sequence": fill_in(self.tokenizer, text,
                                              [p.token_id if j == k else best[0].token_id
                                               for j, best in enumerate(masks)])}
                         for p in preds] for k, preds in enumerate(masks)]
            out.append(per_mask[0] if len(per_mask) == 1 else per_mask)
        return out


class FeatureExtraction(Pipeline):
    task, needs = "feature-extraction", "a model"

    @classmethod
    def supports(cls, model) -> bool:
        return True

    @torch.inference_mode()
    def run(self, items, return_tensors: bool = False, **_):
        from .evaluation.embeddings import hidden_states, text_ids
        from .evaluation.masked_inputs import model_autocast
        model = getattr(self.model, "backbone", self.model)  # a task model: its backbone's states
        limit = None if model.recurrent else model.config.context_length
        device = next(model.parameters()).device
        out = []
        for ids in text_ids(self.tokenizer, items, model.is_encoder, limit or 1 << 30):
            x = torch.tensor([ids], device=device)
            with model_autocast(model, self.precision):
                states = hidden_states(model, x, torch.ones_like(x)).float().cpu()
            out.append(states if return_tensors else states.tolist())
        return out


PIPELINES = {cls.task: cls for cls in (TextGeneration, Text2TextGeneration, Summarization, Translation,
                                       FillMask, TextClassification, TokenClassification,
                                       QuestionAnswering, FeatureExtraction)}


def pipeline(task: str, model: str | Path | torch.nn.Module, tokenizer: str | Path | Tokenizer | None = None,
             device: str = "auto", precision: str | None = None, **defaults) -> Pipeline:
    """A callable for ``task`` on ``model`` (a path: model, run or Hugging Face folder, .gguf; or
    a loaded model with ``tokenizer=``). ``defaults`` are call options every call uses (e.g.
    ``top_k=3``, ``max_new_tokens=50``); ``precision`` defaults to the task's ("auto" for
    generation, "fp32" for the others); the module docstring lists the tasks and outputs."""
    name = ALIASES.get(task, task)
    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline task {task!r}; choose from "
                          f"{', '.join(sorted([*PIPELINES, *ALIASES]))}")
    loaded, tok, tok_cfg, path = load(model, tokenizer, device)
    return PIPELINES[name](loaded, tok, tok_cfg, path, precision, **defaults)
