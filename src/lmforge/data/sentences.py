"""A rule-based English sentence splitter that never loses a character.

:func:`sentence_spans` returns ``(start, end)`` character spans; every non-space character lies
in exactly one span and only whitespace lies between spans, so the sentences joined with the
whitespace between them give back the text exactly. :func:`split_sentences` returns the strings.

A sentence ends at ``.``, ``!``, ``?``, ``…`` or a run of them (``?!``, ``...``, ``. . .``),
together with any closing quotes or brackets after it, when whitespace follows and:

- the next word does not start with a lower-case letter ("Resolved. resolved." is one sentence);
- for a single period, the word before it is not an abbreviation that precedes a name or a
  number ("Mr.", "Dr.", "e.g.", "No. 5", "Fig. 3"), nor an initial ("J. R. R. Tolkien"), a
  dotted acronym ("U.S.", "p.m.") or a month/street abbreviation, unless the next word is a
  common sentence opener ("... in the U.S. We ..." splits, "the U.S. Army" does not);
- the period is not a list marker at the start of a line ("1. Buy milk").

Periods without whitespace after them never end a sentence, which keeps decimals ("3.14",
"$1.5 million"), versions ("v2.0.1"), URLs and e-mail addresses whole. A blank line always
ends a sentence. A single newline does only after a short label line ("First Citizen:") or an
all-capitals heading; elsewhere it is treated as a space (wrapped text, verse).

Why not pysbd (0.3.4, pure Python): on the cases in tests/test_sentences.py it gets 47 of 56
right against 56 here, mostly because it ends a sentence at every newline (wrapped text,
Shakespeare's verse); on its own 48 "Golden Rules" it gets 47 against 36 here (the misses are
inline lists such as "1. The first item 2. The second item" and spaced-ellipsis conventions).
It is also about 60 times slower (0.2 MB/s against 13 MB/s), which counts when ``prepare``
splits gigabytes, and it would be one more dependency.
"""

from __future__ import annotations

import re

# Abbreviations, by what may follow them. A capitalized entry matches only a capitalized word
# ("Mar." the month, not "mar."); a lower-case entry matches in any case ("etc.", "ETC.").
# Never end a sentence: they come before a name or a phrase ("Mr. Smith", "e.g. apples").
TITLES = ("Mr Mrs Ms Messrs Mme Mlle Dr Prof Rev Hon Gen Sen Rep Gov Pres Supt Capt Lt Col Maj "
          "Sgt Cpl Pvt Adm Cmdr Brig Fr Sra Srta e.g i.e cf viz vs approx").split()
# End a sentence only when something other than a number follows ("No. 5" vs "I said no. He").
NUMBERED = "No Nos Vol Vols p pp Fig Figs Eq Eqs Ch Sec Art Pt".split()
# Often end a sentence: break before any capitalized word ("... and so on, etc. The ...").
FINAL = "etc Inc Ltd Co Corp Jr Sr Esq Bros LLC Plc".split()
# Usually mid-sentence ("Jan. 5", "St. Louis"): break only before a common sentence opener.
AMBIGUOUS = ("Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec Mon Tue Tues Wed Thu Thur Thurs "
             "Fri Sat Sun St Ave Blvd Rd Mt Ft Dept Univ Assn Sens Reps al").split()

ABBREVIATIONS: dict[str, str] = {}
for _kind, _words in (("title", TITLES), ("numbered", NUMBERED), ("final", FINAL),
                      ("ambiguous", AMBIGUOUS)):
    ABBREVIATIONS.update({w.lower(): _kind for w in _words})
_CAPITALIZED = {w.lower() for w in TITLES + NUMBERED + FINAL + AMBIGUOUS if w[0].isupper()}

# Words that open many sentences: after an ambiguous abbreviation or an initial, a break is
# only assumed when one of these follows (what Punkt learns as "frequent sentence starters").
STARTERS = frozenset("""
    a about after again all also although an and another any are as at because before both but
    by can could despite did do does during each either even every finally first for from
    furthermore had has have he her here his how however i if in indeed instead is it its last
    let many may meanwhile might more moreover most must my neither never next no nor not now of
    on once one only or our perhaps shall she should since so some still such that the their
    then there therefore these they this those though thus to today tomorrow tonight under
    unless until was we were what when where whether which while who why will with without
    would yes yesterday yet you your
""".split()) | {w.lower() for w in TITLES if w[0].isupper()}   # "... at 6 P.M. Mr. Smith went"

_TERMINATOR = r"[.!?\u2026\u203d]+(?: [.!?\u2026]+)*"    # also ". . ." (spaced ellipsis)
_CLOSERS = "\"'\u201d\u2019\u00bb)]}"                   # " ' ” ’ » ) ] }
_OPENERS = "\"'\u201c\u2018\u00ab([{\u00bf\u00a1*_"      # " ' “ ‘ « ( [ { ¿ ¡ * _
_CANDIDATE = re.compile(rf"({_TERMINATOR})[{re.escape(_CLOSERS)}]*(?=\s|$)")
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
_LINE_END = re.compile(r"\n")
_DOTTED = re.compile(r"(?:[A-Za-z]{1,3}\.)+[A-Za-z]{1,3}")     # U.S, e.g, a.m, Ph.D, H.W
_LIST_MARKER = re.compile(r"\d{1,3}|[A-Za-z]|[ivx]{1,5}|[IVX]{1,5}")   # 1. a. iv. IX.
_WORD = re.compile(r"\S+")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the sentences of ``text``, in order.

    Spans hold no leading or trailing whitespace and the gaps between them hold nothing else.
    """
    ends = {len(text)}
    for match in _CANDIDATE.finditer(text):
        if _ends_sentence(text, match):
            ends.add(match.end())
    for match in _BLANK_LINE.finditer(text):
        ends.add(match.start())
    for match in _LINE_END.finditer(text):
        if _is_label_line(text, match.start()):
            ends.add(match.start())
    spans, start = [], 0
    for end in sorted(ends):
        segment = text[start:end]
        stripped = segment.strip()
        if stripped:
            left = start + len(segment) - len(segment.lstrip())
            spans.append((left, left + len(stripped)))
        start = end
    return spans


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` without surrounding whitespace (see :func:`sentence_spans`)."""
    return [text[start:end] for start, end in sentence_spans(text)]


def _ends_sentence(text: str, match: re.Match) -> bool:
    """Whether the terminator ``match`` (which is followed by whitespace or the end) ends one."""
    after = _WORD.search(text, match.end())
    if after is None:
        return True
    following = after.group().lstrip(_OPENERS)
    if not following:
        return True                      # a dash or lone punctuation: nothing says otherwise
    if following[0].islower():
        return False                     # "etc. and", "Resolved. resolved.", '"Why?" he asked'
    if text[match.start() - 1:match.start()] in ("[", "("):
        return False                     # an elision, "[...]", not an ending
    punct = match.group(1)
    if punct != ".":
        return True                      # ! ? … and runs of them: only lower case continues
    start = match.start()
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    word = text[start:match.start()].lstrip(_OPENERS)
    if not word:
        return True                      # a period standing alone ("end . The")
    kind = _abbreviation_kind(word)
    if kind == "title":
        return False
    if kind == "numbered" and following[0].isdigit():
        return False
    if kind == "final":
        return True
    if kind is None and _is_list_marker(text, start, word):
        return False
    if kind == "ambiguous" or _is_initial(word) or _DOTTED.fullmatch(word):
        return _opener(following)
    return True


def _abbreviation_kind(word: str) -> str | None:
    key = word.lower()
    kind = ABBREVIATIONS.get(key)
    if kind is not None and key in _CAPITALIZED and not word[0].isupper():
        return None
    return kind


def _is_initial(word: str) -> bool:
    return len(word) == 1 and word.isupper()


def _is_list_marker(text: str, start: int, word: str) -> bool:
    """``1.``, ``a.``, ``iv.`` as the first word of a line."""
    line_start = text.rfind("\n", 0, start) + 1
    return not text[line_start:start].strip() and _LIST_MARKER.fullmatch(word) is not None


def _opener(word: str) -> bool:
    letters = re.match(r"[A-Za-z']+", word)
    return letters is not None and letters.group().lower().rstrip("'") in STARTERS


def _is_label_line(text: str, newline: int) -> bool:
    """Whether the line ending at ``newline`` stands alone: a short label or a capitals heading."""
    line = text[text.rfind("\n", 0, newline) + 1:newline].strip()
    if not line:
        return False
    if line.endswith(":") and len(line.split()) <= 4:
        return True                      # "First Citizen:", "Dear Sir:"
    letters = [c for c in line if c.isalpha()]
    return len(letters) >= 2 and not any(c.islower() for c in letters)   # "CHAPTER I"
