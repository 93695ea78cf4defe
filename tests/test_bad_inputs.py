"""Bad input to every command: one line naming the problem, exit code 2, no traceback, and the
files already there left byte-identical.

The fixtures are built once for the module (a tiny prepared dataset, a pretrained run of two
steps, fine-tuned classifiers on an encoder and on that run, a corrupt and a mismatched copy
of the run). Every case runs twice: as a real ``python -m lmforge`` subprocess (run several at a
time, so the suite stays fast), and in-process through ``lmforge.cli.main.main``, where any
exception that is not an ``LMForgeError`` fails the test instead of becoming a traceback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from _util import SHAKESPEARE, run_cli

# (id, argv with {placeholders} for the fixture paths, a phrase the error line must contain)
CASES = [
    # tokenizer train / encode / decode / info
    ("tok-train-missing-input", "tokenizer train {root}/nope.txt --kind char --out {new}", "not found"),
    ("tok-train-binary-input", "tokenizer train {binary} --kind char --out {new}", "binary"),
    ("tok-train-empty-input", "tokenizer train {empty} --kind char --out {new}", "empty"),
    ("tok-train-negative-vocab", "tokenizer train {corpus} --kind bpe --vocab-size -5 --out {new}", "vocab"),
    ("tok-train-non-numeric-vocab", "tokenizer train {corpus} --vocab-size many --out {new}", "invalid int"),
    ("tok-train-bad-kind", "tokenizer train {corpus} --kind sentencepiece --out {new}", "invalid choice"),
    ("tok-train-into-run-folder", "tokenizer train {corpus} --kind char --out {run}", "--overwrite"),
    ("tok-encode-missing-tokenizer", "tokenizer encode -t {root}/nope.json --text hi", "not found"),
    ("tok-encode-binary-tokenizer", "tokenizer encode -t {binary} --text hi", "tokenizer"),
    ("tok-decode-non-numeric-id", "tokenizer decode -t {tok} seven", "seven"),
    ("tok-decode-out-of-range-id", "tokenizer decode -t {tok} 99999", "99999"),
    ("tok-info-malformed-json", "tokenizer info -t {malformed_json}", "tokenizer"),
    # prepare / prepare-merge
    ("prepare-missing-input", "prepare {root}/nope.txt -t {tok} --out {new}", "not found"),
    ("prepare-empty-input", "prepare {empty} -t {tok} --out {new} --workers 1", "no documents"),
    ("prepare-binary-input", "prepare {binary} -t {tok} --out {new} --workers 1", "binary"),
    ("prepare-existing-out", "prepare {corpus} -t {tok} --out {data} --workers 1", "--overwrite"),
    ("prepare-negative-workers", "prepare {corpus} -t {tok} --out {new} --workers -1", "workers"),
    ("prepare-val-fraction-above-one", "prepare {corpus} -t {tok} --out {new} --val-fraction 2", "val_fraction"),
    ("prepare-zero-shard-tokens", "prepare {corpus} -t {tok} --out {new} --shard-tokens 0", "shard_tokens"),
    ("prepare-binary-tokenizer", "prepare {corpus} -t {binary} --out {new}", "tokenizer"),
    ("merge-missing-part", "prepare-merge {data} {root}/nope --out {new}", "nope"),
    ("merge-run-folder-as-part", "prepare-merge {data} {run} --out {new}", "meta.json"),
    ("merge-existing-out", "prepare-merge {data} --out {run}", "--overwrite"),
    ("merge-same-part-twice", "prepare-merge {data} {data} --out {new}", "more than once"),
    # models / plan
    ("models-unknown-flag", "models --family gpt", "unrecognized"),
    ("plan-unknown-model", "plan --model nosuchpreset", "nosuchpreset"),
    ("plan-zero-gpus", "plan --model gpt-mini --gpus 0", "gpus"),
    ("plan-non-numeric-batch", "plan --model gpt-mini --global_batch lots", "global_batch"),
    # pretrain
    ("pretrain-binary-config", "pretrain --config {binary}", "not utf-8"),
    ("pretrain-malformed-config", "pretrain --config {malformed_yaml}", "cannot parse"),
    ("pretrain-unknown-preset", "pretrain --data {data} --out_dir {new} --model nosuchpreset", "nosuchpreset"),
    ("pretrain-negative-steps", "pretrain --data {data} --out_dir {new} --max_steps -3", "max_steps"),
    ("pretrain-bad-objective", "pretrain --data {data} --out_dir {new} --objective nope", "nope"),
    ("pretrain-bad-objective-args-json", "pretrain --data {data} --out_dir {new} --objective_args {{bad",
     "objective_args"),
    ("pretrain-unknown-objective-option", "pretrain --data {data} --out_dir {new} --model baby --objective mlm "
     "--objective_args {{\"nope\":1}}", "unknown option(s) nope"),
    ("pretrain-electra-without-mask-token", "pretrain --data {data} --out_dir {new} --model bert-mini "
     "--objective electra", "mask token missing"),
    ("pretrain-mup-on-lstm", "pretrain --data {data} --out_dir {new} --model lstm-small --mup-base-width 64",
     "muP"),
    ("pretrain-bad-time", "pretrain --data {data} --out_dir {new} --model baby --time soon", "duration"),
    ("pretrain-bad-head-init", "pretrain --data {data} --out_dir {new} --model baby --objective mlm "
     "--mlm.head-init eye", "head_init"),
    ("pretrain-existing-run", "pretrain --data {data} --out_dir {run} --model baby", "--overwrite"),
    ("pretrain-missing-data", "pretrain --data {root}/nope --out_dir {new} --model baby", "nope"),
    ("pretrain-resume-corrupt-checkpoint", "pretrain --resume {run_corrupt}", "checkpoint"),
    ("pretrain-resume-other-model", "pretrain --resume {run_mismatch}", "do not fit"),
    ("pretrain-resume-not-a-run", "pretrain --resume {data}", "config"),
    # generate / score / fill-mask / embed, fine-tuned models included
    ("generate-finetuned-encoder", "generate --model {ft_enc} --prompt hi", "fine-tuned classification"),
    ("generate-finetuned-decoder", "generate --model {ft_dec} --prompt hi", "fine-tuned classification"),
    ("generate-finetuned-beams", "generate --model {ft_enc} --prompt hi --num-beams 2", "fine-tuned classification"),
    ("generate-missing-model", "generate --model {root}/nope --prompt hi", "not found"),
    # serve (refused before anything listens)
    ("serve-missing-model", "serve {root}/nope --port 0", "not found"),
    ("serve-no-model", "serve --port 0", "no model"),
    ("serve-two-models", "serve {run} --model {ft_enc} --port 0", "two models"),
    ("serve-public-without-key", "serve {run} --host 0.0.0.0", "--api-key"),
    ("serve-zero-batch", "serve {run} --max-batch 0", "max-batch"),
    ("serve-bad-port", "serve {run} --port 70000", "port"),
    ("serve-non-numeric-timeout", "serve {run} --request-timeout soon", "request_timeout"),
    ("generate-corrupt-weights", "generate --model {model_corrupt} --prompt hi", "model.safetensors"),
    ("generate-negative-samples", "generate --model {run} --prompt hi --num-samples 0", "num-samples"),
    ("generate-empty-prompts-file", "generate --model {run} --prompts-file {empty}", "no prompts"),
    ("score-missing-model-empty-file", "score --model {root}/nope --file {empty}", "not found"),
    ("score-empty-file", "score --model {run} --file {empty}", "empty text"),
    ("score-binary-file", "score --model {run} --file {binary}", "cannot read"),
    ("fill-mask-finetuned", "fill-mask --model {ft_enc} --text hi", "needs a masked-lm model"),
    ("fill-mask-decoder", "fill-mask --model {run} --text hi", "encoder"),
    ("fill-mask-zero-top-k", "fill-mask --model {run} --text hi --top-k 0", "top-k"),
    ("embed-bad-output-suffix", "embed --model {run} --input {corpus} --output {root}/e.txt", ".npy"),
    ("embed-empty-input", "embed --model {run} --input {empty}", "empty"),
    ("embed-bad-pooling", "embed --model {run} --input {corpus} --pooling max", "invalid choice"),
    # compare / plot / convert
    ("compare-missing-data", "compare {root}/nope --out {new}", "nope"),
    ("compare-bad-json", "compare {data} --out {new} --lstm_args {{bad", "lstm_args"),
    ("plot-not-a-run", "plot {data}", "metrics"),
    ("plot-out-under-a-file", "plot {run} --out {binary}/loss.png", "cannot write"),
    ("convert-missing-src", "convert {root}/nope {new}", "not found"),
    ("convert-existing-out", "convert {run} {data}", "--overwrite"),
    ("convert-bad-dtype", "convert {run} {new} --dtype f64", "invalid choice"),
    ("convert-q4_0-not-gguf", "convert {run} {new} --to lmforge --dtype q4_0", "--dtype q4_0 is for --to gguf only"),
    # compress
    ("compress-unknown-method", "compress {run} --methods int3 --out {new}", "unknown compress method 'int3'"),
    ("compress-bad-group-size", "compress {run} --methods int4-g48 --out {new}", "group size must be one of"),
    ("compress-quantize-then-prune", "compress {run} --methods int8+wanda50 --out {new}", "quantization must be the last"),
    ("compress-existing-out", "compress {run} --methods int8 --out {data}", "--overwrite"),
    ("compress-missing-eval-data", "compress {run} --methods int8 --eval-data {root}/nope.txt --out {new}", "not found"),
    ("compress-task-without-eval-data", "compress {ft_enc} --methods dynamic-int8 --out {new}", "--eval-data"),
    ("compress-dynamic-int8-decoder", "compress {run} --methods dynamic-int8 --eval-data {corpus} --eval-tokens 64 "
     "--prompt-tokens 8 --new-tokens 2 --repeats 1 --out {new}", "dynamic-int8 is for encoders"),
    ("compress-recover-without-data", "compress {run} --methods prune50 --recover-steps 5 --out {new}", "--recover-data"),
    # scale
    ("scale-plan-no-budget", "scale plan --data {data}", "exactly one of --compute, --budget and --time"),
    ("scale-plan-two-budgets", "scale plan --data {data} --compute 1e12 --time 5m", "exactly one of"),
    ("scale-plan-bad-duration", "scale plan --data {data} --time soon", "duration"),
    ("scale-plan-not-a-dataset", "scale plan --data {corpus} --compute 1e12", "not a prepared dataset"),
    ("scale-plan-into-existing", "scale plan --data {data} --compute 1e12 --sizes 2 --out {new}", "--sizes"),
    ("scale-run-without-plan", "scale run {data}", "no sweep plan"),
    ("scale-fit-missing-table", "scale fit {root}/nope.csv", "no such table"),
    ("scale-fit-text-file", "scale fit {corpus}", "needs columns n"),
    ("scale-predict-missing-fit", "scale predict {root}/nope.json --compute 1e15", "no fit"),
    ("scale-search-no-data", "scale search --max-params 1e5 --out {new}", "--data is required"),
    ("scale-search-eta-one", "scale search --data {data} --eta 1 --out {new}", "--eta must be at least 2"),
    ("scale-search-empty-space", "scale search --data {data} --widths 48 --head-dims 32 --out {new}",
     "search space is empty"),
    ("scale-search-nothing-fits", "scale search --data {data} --max-params 100 --out {new}",
     "no config of the space satisfies"),
    ("scale-search-bad-lrs", "scale search --data {data} --lrs fast --out {new}", "--lrs"),
    ("scale-search-out-is-a-file", "scale search --data {data} --out {binary}", "is a file"),
    ("scale-search-into-run-folder", "scale search --data {data} --out {run}", "holds other files"),
    # finetune / predict / evaluate / experiment / quickstart
    ("finetune-one-row", "finetune --model {body} --data {one_row} --out_dir {new}", "only 1 example"),
    ("finetune-one-label", "finetune --model {body} --data {one_label} --out_dir {new}", "distinct label"),
    ("finetune-bad-task-args-json", "finetune --model {body} --data {train} --out_dir {new} --task_args {{bad",
     "task_args"),
    ("finetune-binary-data", "finetune --model {body} --data {binary} --out_dir {new}", "binary"),
    ("finetune-unknown-task-option", "finetune --model {body} --data {train} --out_dir {new} --task_args "
     "{{\"nope\":1}}", "unknown option(s) nope"),
    ("finetune-existing-out", "finetune --model {body} --data {train} --out_dir {ft_enc}", "--overwrite"),
    ("finetune-zero-batch", "finetune --model {body} --data {train} --out_dir {new} --batch_size 0", "batch_size"),
    ("predict-model-without-head", "predict --model {body} --data {train}", "no task head"),
    ("predict-missing-data", "predict --model {ft_enc} --data {root}/nope.tsv", "not found"),
    ("predict-beams-on-a-classifier", "predict --model {ft_enc} --data {train} --num-beams 4",
     "apply to seq2seq and sft"),
    ("predict-zero-batch", "predict --model {ft_enc} --data {train} --batch-size 0", "batch-size"),
    ("predict-output-under-a-file", "predict --model {ft_enc} --data {train} --output {binary}/p.jsonl", "cannot write"),
    ("evaluate-output-under-a-file", "evaluate --model {ft_enc} --data {train} --output {binary}/m.json",
     "cannot write"),
    ("evaluate-binary-data", "evaluate --model {ft_enc} --data {binary}", "cannot read"),
    ("evaluate-empty-data", "evaluate --model {ft_enc} --data {empty}", "no examples"),
    ("evaluate-missing-model", "evaluate --model {root}/nope --data {train}", "not found"),
    ("experiment-missing-data", "experiment pretrain-vs-scratch --model {body} --data {root}/nope.tsv "
     "--out_dir {new}", "not found"),
    # distill
    ("distill-missing-teacher", "distill --teacher {root}/nope --data {train} --out {new}", "teacher not found"),
    ("distill-bad-student", "distill --teacher {ft_enc} --student tiny:3 --data {train} --out {new}",
     "student must be"),
    ("distill-layer-out-of-range", "distill --teacher {ft_enc} --student layers:0,7 --data {train} --out {new}",
     "out of range"),
    ("distill-alpha-above-one", "distill --teacher {ft_enc} --data {train} --out {new} --alpha 2", "alpha"),
    ("distill-zero-temperature", "distill --teacher {ft_enc} --data {train} --out {new} --temperature 0",
     "temperature"),
    ("distill-base-teacher-logits", "distill --teacher {body} --student keep:1 --data {train} --out {new}",
     "fine-tuned"),
    ("distill-task-teacher-on-corpus", "distill --teacher {ft_enc} --student keep:1 --data {data} --out {new}",
     "task model"),
    ("distill-tokenizer-mismatch", "distill --teacher {body} --student keep:1 --data {data} --out {new} "
     "--alpha 1 --attention-weight 1", "different tokenizer"),
    ("distill-existing-out", "distill --teacher {ft_enc} --student keep:1 --data {train} --out {ft_dec}",
     "--overwrite"),
    ("quickstart-missing-corpus", "quickstart --out {new} --corpus {root}/nope.txt", "not found"),
    ("quickstart-zero-steps", "quickstart --out {new} --max-steps 0", "max_steps"),
    ("quickstart-over-a-run", "quickstart --out {run} --max-steps 1", "not a quickstart folder"),
]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every file and folder the cases name, built once (about 15 s on a laptop CPU)."""
    import lmforge
    from lmforge.models import preset
    from lmforge.models.io import build_model, save_pretrained
    from lmforge.tasks.finetune import FinetuneConfig, finetune
    from lmforge.training import TrainConfig

    root = tmp_path_factory.mktemp("bad_inputs")
    f = {"root": root}
    f["corpus"] = root / "corpus.txt"
    f["corpus"].write_text(SHAKESPEARE.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    f["empty"] = root / "empty.txt"
    f["empty"].write_text("")
    f["binary"] = root / "binary.bin"
    f["binary"].write_bytes(bytes(range(256)) * 8)
    f["malformed_json"] = root / "malformed.json"
    f["malformed_json"].write_text('{"model": {"type": "BPE", ')
    f["malformed_yaml"] = root / "malformed.yaml"
    f["malformed_yaml"].write_text("max_steps: [1, 2\nlr: 3\n")

    tok = lmforge.train_tokenizer([f["corpus"]], kind="char")
    f["tok"] = lmforge.save_tokenizer(tok, root / "tok")
    f["data"] = root / "data"
    lmforge.prepare_corpus([f["corpus"]], tok, f["data"], workers=1, split_on_blank_lines=True,
                           val_fraction=0.2)
    f["run"] = root / "run"
    lmforge.pretrain(TrainConfig(data=str(f["data"]), out_dir=str(f["run"]), model="baby",
                                 max_steps=2, batch_size=2, block_size=32, warmup_steps=0,
                                 eval_interval=0, eval_batches=1, progress=False,
                                 tensorboard=False, precision="fp32", device="cpu"))
    # A corrupt copy (truncated weights) and one whose config now names another architecture.
    f["run_corrupt"] = root / "run-corrupt"
    shutil.copytree(f["run"], f["run_corrupt"])
    for weights in f["run_corrupt"].rglob("model.safetensors"):
        weights.write_bytes(weights.read_bytes()[:1000])
    f["model_corrupt"] = f["run_corrupt"] / "model"
    f["run_mismatch"] = root / "run-mismatch"
    shutil.copytree(f["run"], f["run_mismatch"])
    config = yaml.safe_load((f["run_mismatch"] / "config.yaml").read_text())
    config["model_args"] = {**(config.get("model_args") or {}), "n_layer": 1}
    (f["run_mismatch"] / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    wordpiece = lmforge.train_tokenizer([f["corpus"]], kind="wordpiece", vocab_size=300)
    f["body"] = root / "body"
    save_pretrained(build_model(preset("bert-mini", vocab_size=wordpiece.get_vocab_size(), n_layer=1)),
                    f["body"], tokenizer=wordpiece)
    f["train"] = root / "train.tsv"
    f["train"].write_text("text\tlabel\n" + "".join(f"{'good' if i % 2 else 'bad'} thing {i}\t{i % 2}\n"
                                                   for i in range(16)))
    f["one_row"] = root / "one.tsv"
    f["one_row"].write_text("text\tlabel\ngood thing\t1\n")
    f["one_label"] = root / "one-label.tsv"
    f["one_label"].write_text("text\tlabel\ngood\t1\nfine\t1\nnice\t1\n")
    for name, body in (("ft_enc", f["body"]), ("ft_dec", f["run"])):
        f[name] = root / name
        finetune(FinetuneConfig(model=str(body), data=str(f["train"]), out_dir=str(f[name]), epochs=1,
                                batch_size=8, progress=False, tensorboard=False, device="cpu"))
    return f


def _argv(template: str, files: dict[str, Path], case: str) -> list[str]:
    """The case's command line; {new} is an output path of its own that does not exist."""
    paths = {**{k: str(v) for k, v in files.items()}, "new": str(files["root"] / f"new-{case}")}
    return template.format(**paths).split()


def _check(case: str, code: int, stderr: str, needle: str) -> None:
    assert code == 2, f"{case}: exit code {code}\n{stderr}"
    assert "Traceback" not in stderr, f"{case}:\n{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{case}: {len(lines)} lines on stderr:\n{stderr}"
    assert "error" in lines[0] and needle.lower() in lines[0].lower(), f"{case}: {lines[0]}"


@pytest.fixture(scope="module")
def cli_results(files):
    """Every case through ``python -m lmforge``, a few at a time; the tree's hashes around them."""
    before = _hashes(files["root"])
    with ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        procs = dict(zip((case for case, _, _ in CASES),
                         pool.map(lambda c: run_cli(*_argv(c[1], files, c[0]), timeout=120), CASES)))
    return procs, before, _hashes(files["root"])


@pytest.mark.parametrize("case,template,needle", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input_is_one_line(cli_results, case, template, needle):
    proc = cli_results[0][case]
    _check(case, proc.returncode, proc.stderr, needle)


def test_cli_bad_inputs_leave_files_intact(cli_results):
    _, before, after = cli_results
    changed = sorted(k for k in before if after.get(k) != before[k])
    added = sorted(set(after) - set(before))
    assert not changed and not added, f"changed {changed}, added {added}"


def test_main_raises_only_lmforge_errors(files, capsys):
    """In-process: an exception that is not an LMForgeError escapes main() and fails here."""
    from lmforge.cli.main import main

    failures = []
    for case, template, needle in CASES:
        before = _hashes(files["root"])
        try:
            code = main(_argv(template, files, case + "-inproc"))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        err = capsys.readouterr().err
        try:
            _check(case, code, err, needle)
            assert _hashes(files["root"]) == before, f"{case}: files changed"
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)


def test_finetuned_models_embed_and_score_with_their_backbone(files):
    """embed and score work on a fine-tuned classifier's backbone and say so on stderr."""
    for model in ("ft_enc", "ft_dec"):
        e = run_cli("embed", "--model", files[model], "--input", files["corpus"], "--output",
                    files["root"] / f"{model}.npy", "--device", "cpu")
        assert e.returncode == 0, e.stderr
        assert "fine-tuned classification model" in e.stderr and "backbone" in e.stderr
        import numpy as np
        vectors = np.load(files["root"] / f"{model}.npy")
        lines = [x for x in files["corpus"].read_text().splitlines() if x.strip()]
        assert vectors.shape[0] == len(lines) and np.isfinite(vectors).all()
        (files["root"] / f"{model}.npy").unlink()
        s = run_cli("score", "--model", files[model], "--text", "First Citizen: speak.", "--json",
                    "--device", "cpu")
        assert s.returncode == 0, s.stderr
        assert "backbone" in s.stderr
        import json
        result = json.loads(s.stdout)
        assert result["tokens"] > 0 and result["perplexity"] > 1


def test_a_dying_prepare_worker_fails_at_once(files, tmp_path):
    """A worker killed mid-run (os._exit) fails prepare with one line, quickly, and leaves no
    temp folder. The script patches the worker function at its top level, which the spawned
    workers re-run; the call itself is under the __main__ guard, so workers are used."""
    script = tmp_path / "die.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from lmforge.data import prepare

        def _die(docs, split):
            os._exit(3)

        prepare._process_in_worker = _die

        if __name__ == "__main__":
            from lmforge.cli.main import main
            sys.exit(main(["prepare", {str(files['corpus'])!r}, "-t", {str(files['tok'])!r},
                           "--out", {str(tmp_path / 'out')!r}, "--workers", "2"]))
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    _check("dying worker", proc.returncode, proc.stderr, "worker process died")
    assert time.perf_counter() - start < 30  # not a wait on chunks that never come
    assert sorted(p.name for p in tmp_path.iterdir()) == ["die.py"]


def test_tokenizer_train_writes_only_into_its_own_folders(files, tmp_path):
    """A folder holding just an earlier tokenizer is replaced with --overwrite; a run folder is
    refused without it, and with it only tokenizer.json is written there."""
    from lmforge.cli.main import main

    base = ["tokenizer", "train", str(files["corpus"]), "--kind", "char", "--quiet", "--out"]
    assert main([*base, str(tmp_path / "tok")]) == 0
    assert main([*base, str(tmp_path / "tok")]) == 2  # exists, no --overwrite
    assert main([*base, str(tmp_path / "tok"), "--overwrite", "--lowercase"]) == 0
    assert "Lowercase" in (tmp_path / "tok" / "tokenizer.json").read_text()
    run = tmp_path / "run"
    shutil.copytree(files["run"], run, ignore=shutil.ignore_patterns("checkpoints"))
    before = _hashes(run)
    assert main([*base, str(run)]) == 2
    assert _hashes(run) == before
    assert main([*base, str(run), "--overwrite"]) == 0
    after = _hashes(run)
    assert set(after) == set(before) | {"tokenizer.json"}
    assert all(after[k] == v for k, v in before.items())


def test_python_api_names_a_fine_tuned_model(files):
    """generate_text, score_text, embed and fill_mask refuse a task model with one clear error
    (pointing at its backbone) instead of failing deep inside; the backbone itself works."""
    import lmforge
    from lmforge.evaluation.embeddings import embed
    from lmforge.evaluation.fill_mask import fill_mask
    from lmforge.hub import load_model

    for name in ("ft_enc", "ft_dec"):
        model, tok, _ = load_model(files[name])
        calls = [lambda: lmforge.generate_text(model, tok, ["First"], 3),
                 lambda: lmforge.score_text(model, tok, "First Citizen"),
                 lambda: embed(model, tok, ["First Citizen"]),
                 lambda: fill_mask(model, tok, "First [MASK]", 3)]
        for call in calls:
            with pytest.raises(lmforge.LMForgeError, match="fine-tuned classification model"):
                call()
        assert lmforge.score_text(model.backbone, tok, "First Citizen").num_tokens > 0
