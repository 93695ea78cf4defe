"""The distributed code path on a machine with one GPU: a 1-rank process group (NCCL on CUDA,
gloo on CPU) that the engine treats as a torchrun job, so DDP, FSDP2 (+ compiled blocks, bf16
MixedPrecisionPolicy) and torch.distributed.checkpoint run for real on the GPU; each run saves
a DCP checkpoint and resumes from it. torchrun with one process is an ordinary run in lmforge,
hence the patched launch_ranks. Not a test: a check for a GPU session.

    python benchmarks/gpu_one_rank.py --data DATASET [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import lmforge.training.distributed as D
from lmforge.training import TrainConfig, Trainer, load_run_config
from lmforge.training import checkpoint as ckpt


class OneRank(D.Ranks):
    @property
    def distributed(self) -> bool:
        return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="gpt-mini")
    args = p.parse_args()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    D.launch_ranks = lambda parallel="ddp": OneRank(0, 1, 0, parallel)
    root = Path(tempfile.mkdtemp())
    for parallel, compile in (("ddp", False), ("fsdp", True)):
        out = root / parallel
        cfg = dict(data=args.data, model=args.model, device=args.device, parallel=parallel,
                   compile=compile, precision="bf16", max_steps=20, warmup_steps=5,
                   eval_interval=0, save_interval=10, log_interval=10, progress=False,
                   tensorboard=False, batch_size=8, block_size=64)
        first = Trainer(TrainConfig(out_dir=str(out), **{**cfg, "max_steps": 10})).fit()
        sharded = ckpt.is_sharded(out / "checkpoints" / "step-00000010")
        resumed = Trainer(load_run_config(str(out), {"max_steps": 20}), resume=True).fit()
        print(json.dumps({"parallel": parallel, "compile": compile, "device": args.device,
                          "dcp_checkpoint": sharded, "loss_step10": first["train_loss"],
                          "loss_step20": resumed["train_loss"], "step": resumed["step"],
                          "exported": (out / "model" / "model.safetensors").is_file()}), flush=True)
    import torch.distributed as dist
    if dist.is_initialized():
        print("backend", dist.get_backend())
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
