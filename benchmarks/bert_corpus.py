"""Write the shared pretraining corpora as one JSONL file of documents for BERT pretraining.

Each source keeps its own notion of a document, so NSP/SOP negatives come from other documents
and positives from the next sentences of the same one:
- tinyshakespeare: runs of 40 consecutive speeches (blank-line paragraphs) of the play text;
- state_union: one address per file (6 files are Latin-1, the rest ASCII);
- fortunes: one entry per document (entries separated by lines holding %);
- wikitext2 valid: one article per document (split at top-level " = Title = " headings),
  WikiText's detokenization spaces kept as they are.

    python benchmarks/bert_corpus.py OUT.jsonl [--shared ../shared/data/corpora]
"""

import argparse
import json
import re
from pathlib import Path


def shakespeare(path: Path, speeches_per_doc: int = 40):
    speeches = [s.strip() for s in path.read_text(encoding="utf-8").split("\n\n") if s.strip()]
    for i in range(0, len(speeches), speeches_per_doc):
        yield "\n\n".join(speeches[i : i + speeches_per_doc])


def state_union(folder: Path):
    for f in sorted(folder.glob("*.txt")):
        yield f.read_bytes().decode("latin-1").strip()


def fortunes(path: Path):
    entries = path.read_text(encoding="utf-8", errors="replace").split("\n%\n")
    for e in entries:
        if e.strip().strip("%").strip():
            yield e.strip()


def wikitext(path: Path):
    article: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.fullmatch(r" = [^=].* = ", line) and article:
            yield "\n".join(article)
            article = []
        if line.strip():
            article.append(line.strip())
    if article:
        yield "\n".join(article)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared/data/corpora"))
    args = ap.parse_args()
    root = Path(args.shared)
    sources = {
        "tinyshakespeare": shakespeare(root / "tinyshakespeare.txt"),
        "state_union": state_union(root / "state_union"),
        "fortunes": fortunes(root / "fortunes.txt"),
        "wikitext2_valid": wikitext(root / "wikitext2_tokenized_valid.txt"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for name, docs in sources.items():
            n = chars = 0
            for doc in docs:
                f.write(json.dumps({"text": doc, "source": name}) + "\n")
                n += 1
                chars += len(doc)
            print(f"{name}: {n:,} documents, {chars / 1e6:.2f}M characters")


if __name__ == "__main__":
    main()
