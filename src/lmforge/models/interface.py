"""What the rest of lmforge asks of a model: its kind and capabilities, its training FLOPs, the
blocks that parallelism, compilation and activation checkpointing wrap, the parallel modes it
runs under, and how it saves and loads its weights.

Every model class (``GPT``, ``Encoder``, ``EncoderDecoder``, ``LSTMLM``, ``TaskModel``) mixes in
:class:`ModelInterface` and overrides what differs, so the engine, the parallelism code,
evaluation and generation call methods instead of branching on ``config.arch`` strings.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import CheckpointError
from . import mup

class ModelInterface:
    """Mixin for ``nn.Module`` language models that hold a ``ModelConfig`` as ``config``."""

    # Whether scoring and training carry a recurrent ``state`` across chunks of a sequence.
    recurrent = False
    # The ``--parallel`` modes the architecture trains under (see :meth:`parallel_modes`).
    supported_parallel_modes: tuple[str, ...] = ("ddp", "fsdp")
    # Methods besides forward that objectives call with the model's weights (an encoder's MLM
    # and sentence heads): FSDP gathers the weights for them too.
    extra_forward_methods: tuple[str, ...] = ()

    # ---- kind and capabilities ------------------------------------------------------------
    @property
    def kind(self) -> str:
        """"decoder", "encoder", "encoder-decoder" or "lstm" (the config's ``arch``)."""
        return self.config.arch

    @property
    def is_encoder(self) -> bool:
        """A bidirectional encoder (BERT style)."""
        return self.kind == "encoder"

    @property
    def is_decoder(self) -> bool:
        """A causal LM that predicts the next token from its left context (Transformer or LSTM)."""
        return self.kind in ("decoder", "lstm")

    @property
    def is_seq2seq(self) -> bool:
        """An encoder-decoder (T5 / BART style)."""
        return self.kind == "encoder-decoder"

    def can_generate(self) -> bool:
        """Whether the model continues text (decoders, LSTMs and encoder-decoders; not task heads)."""
        return self.kind != "encoder"

    def has_mlm_head(self) -> bool:
        """Whether ``mlm_logits`` works (an encoder saved with its masked-LM head)."""
        return False

    # ---- training cost ----------------------------------------------------------------------
    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token at ``seq_len``: 6N for the matmuls plus attention (PaLM
        appendix B)."""
        cfg = self.config
        n = self.num_parameters(non_embedding=True)
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len

    def batch_flops(self, batch: dict, tokens: int, per_token: float) -> float:
        """Training FLOPs of one batch of ``tokens`` real tokens, given ``per_token`` (this
        model's :meth:`flops_per_token`, computed once by the caller)."""
        return tokens * per_token

    # ---- what parallelism, compile and checkpointing wrap -------------------------------------
    def block_lists(self) -> list[nn.ModuleList]:
        """The lists of repeated blocks (``blocks``; ``enc_blocks`` and ``dec_blocks``), in
        order: what activation checkpointing replaces in place."""
        return [child for name, child in self.named_children()
                if isinstance(child, nn.ModuleList) and name.endswith("blocks")]

    def repeated_blocks(self) -> list[nn.Module]:
        """Every repeated block, in order: the units FSDP shards and ``--compile`` compiles."""
        return [block for blocks in self.block_lists() for block in blocks]

    def parallel_modes(self) -> tuple[str, ...]:
        """The ``--parallel`` modes this model, as it is now, trains under: the architecture's,
        narrowed by layers with an ``only_parallel_modes`` attribute (LoRA: ddp only)."""
        modes = self.supported_parallel_modes
        for m in self.modules():
            only = getattr(m, "only_parallel_modes", None)
            if only is not None:
                modes = tuple(mode for mode in modes if mode in only)
        return modes

    def lr_scale(self, name: str, cfg) -> float:
        """Learning-rate multiplier of parameter ``name`` under TrainConfig ``cfg``: muP's
        1/width-multiplier on hidden matrices (1 without muP); task models multiply in their
        head learning rate and layer-wise decay."""
        return mup.lr_scale(name, self.config, cfg)

    def uses_every_weight(self) -> bool:
        """Whether every trainable weight gets a gradient on every step (DDP then skips the
        search for unused parameters)."""
        return False

    # ---- saving and loading -------------------------------------------------------------------
    def exported_model(self) -> nn.Module:
        """The model a run exports as ``RUN/model``: the model itself, or for a training
        composite (ELECTRA's generator + discriminator) the part being pretrained."""
        return self

    def companion_models(self) -> dict[str, nn.Module]:
        """Other trained parts a run saves beside ``RUN/model``, as ``RUN/<name>`` (ELECTRA's
        generator); none for a plain model."""
        return {}

    def state_for_save(self) -> dict[str, torch.Tensor]:
        """State dict without the tied copies of the embedding (safetensors refuses shared
        storage)."""
        state = self.state_dict()
        state.pop("mlm_head.embedding.weight", None)
        if self.config.tie_embeddings:
            state.pop("lm_head.weight", None)
        return {k: v.detach().contiguous() for k, v in state.items()}

    def load_saved_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load ``state`` (as :meth:`state_for_save` gives it) strictly; a missing, unexpected or
        mis-shaped tensor is one clear CheckpointError."""
        expected = self.state_for_save()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
            if unexpected:
                parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
            if shapes:
                parts.append(f"shape mismatch {'; '.join(shapes[:3])}")
            raise CheckpointError(f"weights in {source} do not fit this architecture: {'; '.join(parts)}")
        self.load_state_dict(state, strict=False)
