"""Print the Markdown table of the fine-tuning quality runs under OUT_DIR (finetune_quality.sh).

    python benchmarks/finetune_table.py runs/quality
"""

import json
import sys
from pathlib import Path

# run folder -> (what, metrics shown: (label, key in eval.json / test.json, scale))
RUNS = {
    "bert-mini-sst2": ("SST-2 dev", [("accuracy", "val_accuracy", 100)]),
    "bert-mini-mrpc": ("MRPC dev", [("F1", "val_f1", 100), ("accuracy", "val_accuracy", 100)]),
    "bert-mini-stsb": ("STS-B dev", [("Pearson", "val_pearson", 100), ("Spearman", "val_spearman", 100)]),
    "bert-mini-cola": ("CoLA dev", [("MCC", "val_mcc", 100)]),
    "bert-mini-wnut17": ("WNUT-17 test", [("entity F1", "test:f1", 100), ("dev F1", "val_f1", 100)]),
    "bert-mini-squad": ("SQuAD-sample (article 5)", [("EM", "val_exact", 1), ("F1", "val_f1", 1)]),
    "t5-tatoeba": ("Tatoeba en-fr (500 held out)", [("BLEU", "val_bleu", 1), ("chrF", "val_chrf", 1)]),
    "minilm-sst2": ("SST-2 dev", [("accuracy", "val_accuracy", 100)]),
    "minilm-mrpc": ("MRPC dev", [("F1", "val_f1", 100), ("accuracy", "val_accuracy", 100)]),
    "minilm-stsb": ("STS-B dev", [("Pearson", "val_pearson", 100), ("Spearman", "val_spearman", 100)]),
    "minilm-wnut17": ("WNUT-17 test", [("entity F1", "test:f1", 100), ("dev F1", "val_f1", 100)]),
    "smollm2-sft": ("SST-2 instructions (200 dev)", [("exact-match accuracy", "val_exact_match", 1)]),
}


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/quality")
    print("| model | task | metric | value | train time |")
    print("|---|---|---|---:|---:|")
    for name, (task, metrics) in RUNS.items():
        run = out / name
        if not (run / "eval.json").is_file():
            continue
        found = json.loads((run / "eval.json").read_text())
        test = json.loads((run / "test.json").read_text()) if (run / "test.json").is_file() else {}
        model = name.split("-")[0] if not name.startswith("bert-mini") else "bert-mini"
        for label, key, scale in metrics:
            value = test.get(key[5:]) if key.startswith("test:") else found.get(key)
            if value is None:
                continue
            print(f"| {model} | {task} | {label} | {scale * value:.2f} | {found['train_seconds'] / 60:.1f} min |")
    before = out / "smollm2-before.json"
    if before.is_file():
        print(f"| smollm2 (before SFT) | SST-2 instructions (200 dev) | exact-match accuracy | "
              f"{json.loads(before.read_text())['exact_match']:.2f} | - |")
    for exp in sorted(out.glob("exp-*/experiment.json")):
        s = json.loads(exp.read_text())
        print(f"\n{exp.parent.name}: {s['metric']} pretrained {s['pretrained']['mean']:.4f} ± "
              f"{s['pretrained']['std']:.4f}, scratch {s['scratch']['mean']:.4f} ± {s['scratch']['std']:.4f}, "
              f"gap {s['gap_points']:+.2f} points ({len(s['seeds'])} seeds)")


if __name__ == "__main__":
    main()
