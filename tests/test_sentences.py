"""The sentence splitter: tricky English cases, exact reconstruction, plausible splits of real text."""

from __future__ import annotations

import re

import pytest

from lmforge.data.sentences import TITLES, sentence_spans, split_sentences

# (text, expected sentences): the cases the splitter was chosen on (over pysbd, see the module
# docstring of lmforge.data.sentences); a few come from the "Golden Rules" of pragmatic_segmenter.
CASES = [
    # plain terminators
    ("Hello world. How are you? I am fine!", ["Hello world.", "How are you?", "I am fine!"]),
    ("One sentence only", ["One sentence only"]),
    ("", []),
    ("   \n\n  ", []),
    # runs of punctuation, ellipses
    ("What?! No way!!! Really?!", ["What?!", "No way!!!", "Really?!"]),
    ("I thought... Maybe not.", ["I thought...", "Maybe not."]),
    ("Well... that is odd.", ["Well... that is odd."]),
    ("Wait\u2026 He left\u2026 then silence.", ["Wait\u2026", "He left\u2026 then silence."]),
    ("It went on . . . Then it stopped.", ["It went on . . .", "Then it stopped."]),
    ("So...what now?", ["So...what now?"]),
    # closing quotes and brackets
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ('"Why?" she asked. "Because."', ['"Why?" she asked.', '"Because."']),
    ("\u201cIs it done?\u201d he asked. \u201cYes.\u201d", ["\u201cIs it done?\u201d he asked.", "\u201cYes.\u201d"]),
    ("It works (mostly.) Next we test.", ["It works (mostly.)", "Next we test."]),
    ("We won. (Applause.) Thank you.", ["We won.", "(Applause.)", "Thank you."]),
    ("'Tis done.' Then he slept.", ["'Tis done.'", "Then he slept."]),
    # abbreviations before names and phrases
    ("Mr. Smith met Mrs. Jones and Dr. Who at St. Paul's.",
     ["Mr. Smith met Mrs. Jones and Dr. Who at St. Paul's."]),
    ("Prof. Plum and Gen. Grant left. They were tired.",
     ["Prof. Plum and Gen. Grant left.", "They were tired."]),
    ("Fruit, e.g. apples, i.e. red ones. Cats vs. dogs is old.",
     ["Fruit, e.g. apples, i.e. red ones.", "Cats vs. dogs is old."]),
    ("Bring pens, paper, etc. The shop opens soon.", ["Bring pens, paper, etc.", "The shop opens soon."]),
    ("Bring pens, paper, etc. and also ink.", ["Bring pens, paper, etc. and also ink."]),
    ("He works at Acme Inc. He likes it.", ["He works at Acme Inc.", "He likes it."]),
    ("Acme Ltd. announced profits.", ["Acme Ltd. announced profits."]),
    ("See No. 5 and Fig. 3 on p. 12. No. That is wrong.",
     ["See No. 5 and Fig. 3 on p. 12.", "No.", "That is wrong."]),
    ("I said no. Then I left.", ["I said no.", "Then I left."]),
    ("It happened on Jan. 5, 2020. We were there.", ["It happened on Jan. 5, 2020.", "We were there."]),
    ("He lives on Main St. The house is red.", ["He lives on Main St.", "The house is red."]),
    ("Smith et al. (2019) disagree. We agree.", ["Smith et al. (2019) disagree.", "We agree."]),
    ("He was born in the U.S. He moved to the U.K. in 1990.",
     ["He was born in the U.S.", "He moved to the U.K. in 1990."]),
    ("The U.S. Army and the U.S. Navy agreed.", ["The U.S. Army and the U.S. Navy agreed."]),
    ("We met at 9 a.m. and left at 5 p.m. The day was long.",
     ["We met at 9 a.m. and left at 5 p.m.", "The day was long."]),
    ("Martin Luther King Jr. was born in 1929.", ["Martin Luther King Jr. was born in 1929."]),
    ("She has a Ph.D. in physics.", ["She has a Ph.D. in physics."]),
    ("They closed the deal with Pitt, Briggs & Co. at noon. Let's ask Jane and co. They know.",
     ["They closed the deal with Pitt, Briggs & Co. at noon.", "Let's ask Jane and co.", "They know."]),
    ('"Bohr [...] used the analogy of parallel stairways [...]" (Smith 55).',
     ['"Bohr [...] used the analogy of parallel stairways [...]" (Smith 55).']),
    # initials
    ("J. R. R. Tolkien wrote books. C. S. Lewis did too.",
     ["J. R. R. Tolkien wrote books.", "C. S. Lewis did too."]),
    ("George H.W. Bush spoke. John F. Kennedy listened.",
     ["George H.W. Bush spoke.", "John F. Kennedy listened."]),
    ("We chose plan B. The other plans failed.", ["We chose plan B.", "The other plans failed."]),
    ("We make a good team, you and I. Did you see Albert I. Jones yesterday?",
     ["We make a good team, you and I.", "Did you see Albert I. Jones yesterday?"]),
    # numbers, versions, URLs, e-mail
    ("Pi is 3.14 roughly. It costs $1.5 million.", ["Pi is 3.14 roughly.", "It costs $1.5 million."]),
    ("Use Python 3.11. Version v2.0.1 is out.", ["Use Python 3.11.", "Version v2.0.1 is out."]),
    ("The year was 1999. 2000 came next.", ["The year was 1999.", "2000 came next."]),
    ("Visit www.example.com today. Mail bob@example.org. Thanks.",
     ["Visit www.example.com today.", "Mail bob@example.org.", "Thanks."]),
    ("See https://example.com/a.html. It is short.", ["See https://example.com/a.html.", "It is short."]),
    ("Score: 3.5 vs. 2.0 in the end.", ["Score: 3.5 vs. 2.0 in the end."]),
    # newlines
    ("A first paragraph\n\nA second one.", ["A first paragraph", "A second one."]),
    ("Wrapped text goes on\nover the line. Next one.", ["Wrapped text goes on\nover the line.", "Next one."]),
    ("Mr.\n\nSmith", ["Mr.", "Smith"]),
    ("Items:\n1. Buy milk.\n2. Buy eggs.", ["Items:", "1. Buy milk.", "2. Buy eggs."]),
    ("CHAPTER I\nIt was a dark night.", ["CHAPTER I", "It was a dark night."]),
    # Shakespeare
    ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.",
     ["First Citizen:", "Before we proceed any further, hear me speak.", "All:", "Speak, speak."]),
    ("All:\nResolved. resolved.", ["All:", "Resolved. resolved."]),
    ("Let us kill him, and we'll have corn at our own price.\nIs't a verdict?",
     ["Let us kill him, and we'll have corn at our own price.", "Is't a verdict?"]),
    ("What authority surfeits on would relieve us: if they\nwould yield us but the superfluity.",
     ["What authority surfeits on would relieve us: if they\nwould yield us but the superfluity."]),
    ("O Romeo, Romeo! wherefore art thou Romeo?", ["O Romeo, Romeo! wherefore art thou Romeo?"]),
    ("No more talking on't; let it be done: away, away!\n\nSecond Citizen:\nOne word, good citizens.",
     ["No more talking on't; let it be done: away, away!", "Second Citizen:", "One word, good citizens."]),
]


@pytest.mark.parametrize("text, want", CASES, ids=[c[0][:40] for c in CASES])
def test_tricky_cases(text, want):
    assert split_sentences(text) == want


@pytest.mark.parametrize("text", [c[0] for c in CASES] + [
    "  leading and trailing  ", "a.\n\n\n b. \t C.  ", "\u00a0Non-breaking\u00a0space. Ok.\u2003"])
def test_spans_reconstruct_the_text_exactly(text):
    spans = sentence_spans(text)
    rebuilt, pos = [], 0
    for start, end in spans:
        assert pos <= start < end, spans
        assert not text[pos:start].strip(), "only whitespace between sentences"
        assert text[start:end] == text[start:end].strip()
        rebuilt += [text[pos:start], text[start:end]]
        pos = end
    assert not text[pos:].strip()
    assert "".join(rebuilt) + text[pos:] == text


def test_every_sentence_boundary_is_followed_by_whitespace():
    # What prepare --split-sentences relies on: cutting at a sentence start never splits a word.
    text = "A. B! C? \u201cD.\u201d E\u2026 F.\nG:\nH\n\nI"
    for start, _ in sentence_spans(text)[1:]:
        assert text[start - 1].isspace()


def _words(sentence: str) -> int:
    return len(sentence.split())


def test_state_of_the_union_splits_plausibly(shared_data):
    folder = shared_data / "corpora" / "state_union"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    never_final = tuple(f" {word}." for word in TITLES if word[0].isupper())
    sentences = []
    for path in sorted(folder.glob("*.txt"))[::4]:   # every 4th speech keeps the test quick
        sentences += split_sentences(path.read_text(encoding="utf-8", errors="replace"))
    assert len(sentences) > 1000
    mean = sum(map(_words, sentences)) / len(sentences)
    assert 10 <= mean <= 40, mean
    bad = [s for s in sentences if (" " + s).endswith(never_final) or re.search(r"\s[A-HJ-Z]\.$", s)]
    assert not bad, bad[:5]
