"""How each benchmark's own evaluation code reads a generated answer, beside ours.

Our reading, `parse_yes_no` ("first_word"), is one rule for every benchmark. The
released evaluation scripts each have their own, and they disagree on ordinary
answers, so a number computed with one parser is not comparable with a number
computed with another:

============== ==================================================================
parser         rule (our implementation of the released script's behaviour)
============== ==================================================================
first_word     ours: the first word, after leading quotes / markdown / spaces;
               "yes" / "no" in any case, anything else "other"
mme            MME `eval_tool/calculation.py`: lower-case; exactly "yes" / "no"
               as is, else "yes" if the first 4 characters contain "yes", else
               "no" if they contain "no", else "other"
pope           POPE `evaluate.py`: keep the text before the first ".", drop
               commas, split on single spaces; "no" if a word is exactly "No",
               "no" or "not", otherwise "yes" (never "other": an empty or
               unreadable answer is a yes)
naturalbench   NaturalBench `extract_answer`: whichever of the whole words "yes"
               / "no" (any case) comes first; neither -> "other"
beaf           BEAF `beaf_metric.py`: lower-case; "yes" if "yes" is a substring,
               else "no" if "no" is, else "other" (the script leaves such an
               answer undefined: it reuses the previous answer or crashes)
vlmevalkit     VLMEvalKit `YOrN_Extraction` (HallusionBench stand-in): lower-case,
               VQA-style punctuation removal, then "yes" if the word "yes" occurs
               and "no" does not, "no" the other way round, else "other"
============== ==================================================================

HallusionBench's own evaluation has no rule-based parser: GPT-4 judges each answer
correct / incorrect / unclear against the reference. That cannot run offline, so the
widely used rule-based reading of VLMEvalKit stands in for it (`BENCHMARK_PARSER`).
Winoground and SugarCrepe are officially scored from model scores, not answers, so
they have no benchmark parser.

Not for: computing metrics (`vlm_lens.metrics.yesno`) or our own parser's definition
(`vlm_lens.data.yesno.items.parse_yes_no`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from vlm_lens.data.yesno.items import Answer, parse_yes_no


def parse_mme(text: str | None) -> Answer:
    """MME's reading: the answer itself, else a "yes" / "no" inside its first 4 characters."""
    t = (text or "").lower()
    if t in ("yes", "no"):
        return t  # type: ignore[return-value]
    head = t[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def parse_pope(text: str | None) -> Answer:
    """POPE's reading: "no" when the first sentence has the word No / no / not, else "yes"."""
    first = (text or "").split(".")[0].replace(",", "")
    words = first.split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


_WORD_YES = re.compile(r"\byes\b", re.IGNORECASE)
_WORD_NO = re.compile(r"\bno\b", re.IGNORECASE)


def parse_naturalbench(text: str | None) -> Answer:
    """NaturalBench's reading: the earlier of the whole words yes / no, in any case."""
    t = text or ""
    yes, no = _WORD_YES.search(t), _WORD_NO.search(t)
    if yes is None and no is None:
        return "other"
    if yes is not None and (no is None or yes.start() < no.start()):
        return "yes"
    return "no"


def parse_beaf(text: str | None) -> Answer:
    """BEAF's reading: "yes" anywhere wins, then "no" anywhere (so "I don't know" is no)."""
    t = (text or "").lower()
    if "yes" in t:
        return "yes"
    if "no" in t:
        return "no"
    return "other"


# The VQA evaluation's punctuation set, which VLMEvalKit reuses ("*", "'", ":" are not in it).
_VQA_PUNCT = tuple(';/[]"{}()=+\\_-><@`,?!')
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_LONE_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")


def parse_vlmevalkit(text: str | None) -> Answer:
    """VLMEvalKit's reading: exactly one of the words yes / no after punctuation removal."""
    t = (text or "").lower()
    out = t
    for p in _VQA_PUNCT:
        # A mark touching a space (or any text with "1,000") is deleted, otherwise it
        # becomes a space; the condition looks at the original text.
        if p + " " in t or " " + p in t or _DIGIT_COMMA_DIGIT.search(t):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    words = _LONE_PERIOD.sub("", out).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes and not has_no:
        return "yes"
    if has_no and not has_yes:
        return "no"
    return "other"


#: Parser name -> parser (text -> "yes" / "no" / "other").
ANSWER_PARSERS: dict[str, Callable[[str | None], Answer]] = {
    "first_word": parse_yes_no,
    "mme": parse_mme,
    "pope": parse_pope,
    "naturalbench": parse_naturalbench,
    "beaf": parse_beaf,
    "vlmevalkit": parse_vlmevalkit,
}

#: Benchmark -> the parser its released evaluation uses (or stands in for it).
BENCHMARK_PARSER: dict[str, str] = {
    "mme": "mme",
    "pope": "pope",
    "naturalbench": "naturalbench",
    "beaf": "beaf",
    "hallusionbench": "vlmevalkit",
}

__all__ = [
    "ANSWER_PARSERS",
    "BENCHMARK_PARSER",
    "parse_beaf",
    "parse_mme",
    "parse_naturalbench",
    "parse_pope",
    "parse_vlmevalkit",
]
