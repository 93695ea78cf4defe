"""Write the task files the fine-tuning quality runs need from the shared data.

- squad-train.json / squad-dev.json: the SQuAD 2.0 sample's first 4 articles and its 5th;
- tatoeba-train.tsv / tatoeba-dev.tsv: the 5,000 English-French pairs, 500 held out at random
  (seed 0), attribution column dropped;
- sst2-instruct-train.jsonl / sst2-instruct-dev.jsonl: SST-2 as instructions ("Is this review
  positive or negative?" -> "positive" / "negative"), N random training sentences (seed 0) and
  the first 200 dev sentences.

    python benchmarks/task_files.py OUT_DIR [--shared ../shared/data] [--instructions 1000]
"""

import argparse
import csv
import json
import random
from pathlib import Path

PROMPT = "Is this review positive or negative? Answer with one word.\n"


def glue_rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]


def instruction(row: list[str]) -> str:
    return json.dumps({"prompt": PROMPT + row[0].strip(),
                       "response": "positive" if row[1] == "1" else "negative"}) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--instructions", type=int, default=1000)
    args = ap.parse_args()
    out, tasks = args.out, args.shared / "tasks"
    out.mkdir(parents=True, exist_ok=True)

    squad = json.loads((tasks / "squad_v2_sample" / "dev-v2.0-first5.json").read_text(encoding="utf-8"))
    for name, articles in (("squad-train.json", squad["data"][:4]), ("squad-dev.json", squad["data"][4:])):
        (out / name).write_text(json.dumps({"version": squad["version"], "data": articles}), encoding="utf-8")

    pairs = [line.split("\t")[:2] for line in
             (tasks / "tatoeba_en_fr" / "eng-fra-5000.tsv").read_text(encoding="utf-8").splitlines() if line]
    dev = set(random.Random(0).sample(range(len(pairs)), 500))
    for name, keep in (("tatoeba-train.tsv", False), ("tatoeba-dev.tsv", True)):
        rows = [p for i, p in enumerate(pairs) if (i in dev) == keep]
        (out / name).write_text("".join(f"{en}\t{fr}\n" for en, fr in rows), encoding="utf-8")

    train = glue_rows(tasks / "glue" / "SST-2" / "train.tsv")
    picked = random.Random(0).sample(train, args.instructions)
    (out / "sst2-instruct-train.jsonl").write_text("".join(map(instruction, picked)), encoding="utf-8")
    dev_rows = glue_rows(tasks / "glue" / "SST-2" / "dev.tsv")[:200]
    (out / "sst2-instruct-dev.jsonl").write_text("".join(map(instruction, dev_rows)), encoding="utf-8")
    print(f"wrote {out}: SQuAD 4+1 articles, Tatoeba {len(pairs) - 500}+500 pairs, "
          f"SST-2 instructions {args.instructions}+{len(dev_rows)}")


if __name__ == "__main__":
    main()
