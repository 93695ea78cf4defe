"""An LSTM language model (Zaremba et al., 2014; the PyTorch word_language_model example), driven
by the same ``ModelConfig`` as the Transformer with ``arch="lstm"``.

Fields it reads: ``vocab_size``; ``n_embd``, the embedding and the hidden size (one value, so
the output layer can share the embedding matrix); ``n_layer``; ``dropout`` on the embeddings,
between layers and on the output; ``embedding_dropout``; ``tie_embeddings``; ``bias`` (of the
output layer); and ``context_length``, which here bounds only the backpropagation-through-time
length of training: the carried state gives unbounded context when scoring or generating.
Attention fields (``n_head``, ``pos_embedding``, ``norm``, ...) are ignored.

The one API difference from ``GPT``: ``GPT.forward(idx) -> logits`` sees everything through
its input window, while ``LSTMLM.forward(idx, state=None) -> (logits, state)`` also returns the
recurrent state after ``idx``. Feed it back with the next chunk to continue the sequence;
``state=None`` starts from zeros.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import ModelConfig
from .interface import ModelInterface
from .logits import top_k_filter
from .transformer import compute_dtype

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each of shape (n_layer, B, n_embd)
INIT_RANGE = 0.1  # embeddings (and an untied output layer) ~ U(-0.1, 0.1), as Zaremba et al.


class LSTMLM(ModelInterface, nn.Module):
    """Embedding, stacked ``nn.LSTM``, linear output layer (tied to the embedding by default)."""

    recurrent = True  # scoring and training code carry ``state`` across chunks of a sequence
    supported_parallel_modes = ("ddp",)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.n_embd, cfg.n_embd, num_layers=cfg.n_layer, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.bias)
        # The LSTM keeps PyTorch's U(-1/sqrt(n_embd), 1/sqrt(n_embd)) init (0.0625 at 256,
        # 0.039 at 650: about Zaremba's 0.1 / 0.05 for the small / medium models).
        nn.init.uniform_(self.wte.weight, -INIT_RANGE, INIT_RANGE)
        nn.init.uniform_(self.lm_head.weight, -INIT_RANGE, INIT_RANGE)
        if self.lm_head.bias is not None:
            nn.init.zeros_(self.lm_head.bias)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Unique parameters; ``non_embedding`` drops the embedding unless the output layer is
        tied to it (then it does real work as the output layer), as ``GPT.num_parameters``."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.tie_embeddings:
            n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """6N: each weight is used once per token, and there is no attention."""
        return 6 * self.num_parameters(non_embedding=True)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token vectors (B, T, n_embd) with embedding dropout and dropout applied in training.

        Embedding dropout (Gal & Ghahramani 2016, AWD-LSTM) drops whole word types: every
        occurrence of a dropped word in the batch gets a zero vector, so the model cannot lean
        on one word's vector; the kept vectors are scaled by 1 / (1 - p).
        """
        x = self.wte(idx)
        p = self.config.embedding_dropout
        if self.training and p > 0:
            words, where = torch.unique(idx, return_inverse=True)
            keep = torch.empty(len(words), device=x.device).bernoulli_(1 - p) / (1 - p)
            x = x * keep[where].unsqueeze(-1).to(x.dtype)
        return self.drop(x)

    def forward(self, idx: torch.Tensor, state: State | None = None,
                last_only: bool = False) -> tuple[torch.Tensor, State]:
        """Logits (B, T, vocab) for inputs ``idx`` (B, T) and the state after them. With
        ``last_only`` only the final position's logits (B, 1, vocab) are computed."""
        if state is not None:
            # Under autocast the LSTM may run in another dtype than the state it was given.
            dtype = compute_dtype(self.lstm.weight_hh_l0)
            state = tuple(s.to(dtype) for s in state)
        h, state = self.lstm(self.embed(idx), state)
        h = self.drop(h)
        if last_only:
            h = h[:, -1:]
        return self.lm_head(h), state

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None) -> torch.Tensor:
        """Continue ``idx`` (B, T) by ``max_new_tokens`` sampled tokens (nanoGPT's ``generate``):
        the prompt is read once and every new token is one step of the carried state, so there
        is no context window to crop. Temperature 0 is greedy."""
        logits, state = self(idx, last_only=True)
        out = [idx]
        for _ in range(max_new_tokens):
            logits = logits[:, -1].float()
            if temperature == 0:
                token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    logits = top_k_filter(logits, top_k)
                token = torch.multinomial(logits.softmax(dim=-1), 1)
            out.append(token)
            logits, state = self(token, state)
        return torch.cat(out, dim=1)
