"""Where training metrics go: a JSONL file, TensorBoard event files, and the terminal."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm


class MetricsLogger:
    """Append-only ``metrics.jsonl`` (one record per log event) plus optional TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True):
        """``enabled=False`` (ranks other than 0 of a distributed run) writes nothing."""
        self.path = run_dir / "metrics.jsonl"
        self.file = open(self.path, "a", encoding="utf-8") if enabled else None
        self.tb = None
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but stay usable without it
                self.tb = None

    def log(self, step: int, **values: float) -> None:
        if self.file is None:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(key.replace(".", "/").replace("_", "/", 1) if "/" not in key else key,
                                       value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
    return records


class Progress:
    """A tqdm bar (step, loss, tokens/s, MFU, ETA) on a terminal; in a log file or a pipe (or
    with ``enabled`` False) plain ``step N | loss X`` lines instead, which :attr:`enabled` tells."""

    def __init__(self, total: int, initial: int, enabled: bool, silent: bool = False):
        """``silent`` (ranks other than 0 of a distributed run): no bar and no lines."""
        enabled = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                        file=sys.stderr, disable=not enabled, mininterval=0.5)
        self.enabled, self.silent = enabled, silent

    def update(self, n: int, **postfix: str) -> None:
        self.bar.update(n)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def set_total(self, total: int) -> None:
        """A new end (a time budget fixed max_steps once the run measured its speed)."""
        self.bar.total = total
        self.bar.refresh()

    def write(self, text: str) -> None:
        if self.silent:
            return
        if self.enabled:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
