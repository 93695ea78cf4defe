"""The fixed parts around each tokenizer model: normalizer, pre-tokenizer, decoder, post-processor.

Shared by training (``train.py``) and by loading tokenizers from raw vocabulary files
(``load.py``), so a trained tokenizer and a loaded one of the same kind behave the same.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors

ENDOFTEXT = "<|endoftext|>"
CHAR_UNK = "<unk>"
BERT_UNK, BERT_CLS, BERT_SEP = "[UNK]", "[CLS]", "[SEP]"
BERT_SPECIALS = ["[PAD]", BERT_UNK, BERT_CLS, BERT_SEP, "[MASK]"]
NORMALIZATIONS = (None, "nfc", "nfkc")


def text_normalizer(lowercase: bool, normalization: str | None) -> normalizers.Normalizer | None:
    """Unicode normalization then lowercasing, or None when neither is asked for."""
    steps = []
    if normalization:
        steps.append({"nfc": normalizers.NFC, "nfkc": normalizers.NFKC}[normalization]())
    if lowercase:
        steps.append(normalizers.Lowercase())
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else normalizers.Sequence(steps)


def set_char_pipeline(tok: Tokenizer) -> None:
    """One pre-token per Unicode code point, newlines included; decoding concatenates."""
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()


def set_word_pipeline(tok: Tokenizer) -> None:
    """Whitespace-separated words, for text that is already tokenized (WikiText, PTB). No
    decoder: ``tokenizers`` then joins the tokens with single spaces."""
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = None


def set_byte_level_pipeline(tok: Tokenizer) -> None:
    """GPT-2 byte-level pipeline: bytes mapped to printable symbols, lossless decoding."""
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)


def set_bert_pipeline(tok: Tokenizer, lowercase: bool, normalization: str | None) -> None:
    """BERT pipeline: BertNormalizer (accents stripped when lowercasing), BertPreTokenizer, ## decoder."""
    bert = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=None, lowercase=lowercase)
    unicode = text_normalizer(False, normalization)
    tok.normalizer = normalizers.Sequence([unicode, bert]) if unicode else bert
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")


def bert_post_processor(tok: Tokenizer) -> processors.TemplateProcessing | None:
    """``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with type ids 0/1; None without [CLS]/[SEP]."""
    cls_id, sep_id = tok.token_to_id(BERT_CLS), tok.token_to_id(BERT_SEP)
    if cls_id is None or sep_id is None:
        return None
    return processors.TemplateProcessing(
        single=f"{BERT_CLS}:0 $A:0 {BERT_SEP}:0",
        pair=f"{BERT_CLS}:0 $A:0 {BERT_SEP}:0 $B:1 {BERT_SEP}:1",
        special_tokens=[(BERT_CLS, cls_id), (BERT_SEP, sep_id)],
    )
