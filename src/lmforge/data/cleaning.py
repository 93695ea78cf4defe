"""Document cleaning for pretraining corpora: normalize, strip junk, filter, deduplicate.

Each step can be switched off and is counted in a stats dict (the ``cleaning`` section of a
prepared dataset's meta.json), so a user can see what every filter did to their data.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

NORMALIZATIONS = ("none", "nfc", "nfkc")
STAT_KEYS = (
    "docs_in", "bytes_in",
    "removed_empty", "removed_too_short", "removed_too_long", "removed_junk",
    "removed_duplicate", "removed_near_duplicate",
    "control_chars_removed", "normalized_docs", "whitespace_collapsed_docs",
    "docs_out",
)
# C0/C1 control characters except \t and \n. Lone surrogates (only JSON can produce them) are
# never valid text and cannot be tokenized, so they go too, whatever the options say.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SPACE_RUN = re.compile(r"[ \t]*\t[ \t]*| {2,}")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
SHINGLE_WORDS = 5
NUM_PERM = 128
MINHASH_SEED = 1


def new_stats() -> dict[str, int]:
    """A zeroed cleaning stats dict with every key of ``STAT_KEYS``, in that order."""
    return dict.fromkeys(STAT_KEYS, 0)


class DocumentCleaner:
    """Clean one document at a time; ``clean`` returns the new text or None when a filter drops it.

    Steps, in order: Unicode normalization (NFC/NFKC), control-character removal (keeps \\n and
    \\t), optional collapse of space/tab runs to one space, then the filters: empty, shorter
    than ``min_chars``, longer than ``max_chars`` and junk (share of alphabetic characters among
    non-whitespace characters below ``min_alpha_frac``; language-agnostic via str.isalpha).
    """

    def __init__(self, normalize: str | None = "nfc", remove_control_chars: bool = True,
                 collapse_whitespace: bool = False, min_chars: int = 0,
                 max_chars: int | None = None, min_alpha_frac: float = 0.0):
        normalize = (normalize or "none").lower()
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}")
        self.form = None if normalize == "none" else normalize.upper()
        self.remove_control_chars = remove_control_chars
        self.collapse_whitespace = collapse_whitespace
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.min_alpha_frac = min_alpha_frac

    def clean(self, text: str, stats: dict[str, int]) -> str | None:
        """Return the cleaned ``text``, or None if it was filtered out; updates ``stats``."""
        if self.form and not unicodedata.is_normalized(self.form, text):
            text = unicodedata.normalize(self.form, text)
            stats["normalized_docs"] += 1
        text, removed = (_CONTROL if self.remove_control_chars else _SURROGATE).subn("", text)
        stats["control_chars_removed"] += removed
        if self.collapse_whitespace:
            collapsed = _TRAILING_SPACE.sub("", _SPACE_RUN.sub(" ", text))
            if collapsed != text:
                stats["whitespace_collapsed_docs"] += 1
                text = collapsed
        if not text.strip():
            stats["removed_empty"] += 1
        elif len(text) < self.min_chars:
            stats["removed_too_short"] += 1
        elif self.max_chars is not None and len(text) > self.max_chars:
            stats["removed_too_long"] += 1
        elif self.min_alpha_frac > 0 and alpha_fraction(text) < self.min_alpha_frac:
            stats["removed_junk"] += 1
        else:
            return text
        return None


def alpha_fraction(text: str) -> float:
    """Share of alphabetic characters (str.isalpha, any script) among non-whitespace ones."""
    visible = len(text) - sum(map(str.isspace, text))
    return sum(map(str.isalpha, text)) / visible if visible else 0.0


def content_hash(text: str) -> tuple[int, int]:
    """Two independent stable 64-bit hashes of ``text``: (dedup key, split key).

    blake2b rather than hash(): Python's str hash is salted per process, and these values must
    agree across worker processes and across runs.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def word_shingles(text: str, n: int = SHINGLE_WORDS) -> set[str]:
    """The set of lower-cased word ``n``-grams of ``text`` (the whole text if it is shorter)."""
    words = text.lower().split()
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def minhash_signatures(texts: Sequence[str], num_perm: int = NUM_PERM) -> list[Any]:
    """MinHash signatures (datasketch LeanMinHash, compact to pickle) of word 5-shingles."""
    from datasketch import LeanMinHash, MinHash  # imports scipy: only paid for near-dedup

    shingles = ([s.encode("utf-8") for s in word_shingles(t)] for t in texts)
    return [LeanMinHash(m) for m in MinHash.generator(shingles, num_perm=num_perm, seed=MINHASH_SEED)]


class ExactDeduplicator:
    """Remembers dedup keys of the documents seen so far; the first copy of a text wins."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def is_new(self, key: int) -> bool:
        """True the first time ``key`` is seen, False for every repeat."""
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


class NearDeduplicator:
    """MinHash LSH index: a document is a near duplicate when it collides with an earlier one.

    LSH candidates are taken as duplicates without an exact Jaccard check; at the default
    threshold 0.8 the false-positive region is narrow. Memory grows by roughly 1 KB per kept
    document.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = NUM_PERM):
        from datasketch import MinHashLSH

        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._count = 0

    def is_new(self, signature: Any) -> bool:
        """True (and index it) if no earlier document is similar to ``signature``."""
        if self._lsh.query(signature):
            return False
        self._lsh.insert(self._count, signature, check_duplication=False)
        self._count += 1
        return True
