"""The README's "same workflow from Python" snippet, saved as a script and run with `python`
exactly as written (no `if __name__ == "__main__":` guard): it must finish, not hang."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from _util import REPO, SHAKESPEARE


def readme_snippet() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The same workflow from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_snippet_runs_as_a_script(tmp_path):
    code = readme_snippet()
    assert "__main__" not in code and "prepare_corpus" in code
    assert "max_steps=1000" in code
    (tmp_path / "workflow.py").write_text(code.replace("max_steps=1000", "max_steps=2"))
    (tmp_path / "corpus.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8"))  # val needs a window
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "workflow.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    logprob, perplexity = map(float, lines[-1].split())
    assert logprob < 0 and perplexity > 1
    # Worker processes would re-run this unguarded script: prepare tokenized in-process, said so.
    assert "tokenizing in this process" in proc.stderr or (os.cpu_count() or 1) == 1
    assert sorted(p.name for p in (tmp_path / "runs" / "data").iterdir()) == ["corpus"]  # no temp folder
    assert (tmp_path / "runs" / "gpt" / "model" / "model.safetensors").is_file()


def test_guarded_script_uses_worker_processes(tmp_path):
    """Under the guard, workers are spawned (no warning) and the output equals one process's."""
    (tmp_path / "corpus.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:100_000])
    (tmp_path / "guarded.py").write_text(
        "import lmforge\n"
        "from lmforge.data import prepare\n"
        "prepare.CHUNK_DOCS = 50  # several chunks, so both workers get some\n"
        "if __name__ == '__main__':\n"
        "    tok = lmforge.train_tokenizer(['corpus.txt'], kind='char')\n"
        "    for w in (1, 2):\n"
        "        lmforge.prepare_corpus(['corpus.txt'], tok, f'w{w}', workers=w, split_on_blank_lines=True)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", "guarded.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("train-00000.bin", "meta.json"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
