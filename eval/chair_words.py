"""CHAIR's text side: caption -> COCO objects mentioned, by the reference rules, offline.

The reference is lmms-eval `lmms_eval/tasks/coco_cap_chair/utils.py::caption_to_words` (a port of the original
CHAIR code, LisaAnne/Hallucination `utils/chair.py`, with pattern's `singularize` replaced by WordNet):
1. `nltk.word_tokenize(caption.lower())`;
2. `nltk.pos_tag`, then `WordNetLemmatizer().lemmatize(token, pos)` with pos from the tag's first letter
   (J -> a, V -> v, N -> n, R -> r, anything else -> n);
3. adjacent lemmas that form a key of the two-word list are merged ("hot dog", "baby bird" -> "bird"); a
   merged key that is not an object word ("motor bike", "home plate") drops both words;
4. "seat" is dropped when "toilet" is also in the caption;
5. the words in the COCO object list are kept and mapped to their class by the synonym list.
The word lists are lmms-eval's, verbatim, in `eval/data/chair_coco_words.json` (MIT, see SOURCE notes there).

Offline route (no nltk.download): tokenisation is NLTK's own code (PyPI `nltk`, Apache-2.0): its Treebank
word tokenizer after Punkt sentence splitting with the English model's abbreviation, collocation and
sentence-starter lists (`eval/data/punkt_english.json`). Lemmas come from `eval/data/chair_lemmas.tsv`, which
`tools/chair_lemmas.py` derives from WordNet 3.0 with NLTK's lemmatizer: every token whose lemma under some POS
can be a COCO word, with its lemma under each POS. Every other token is irrelevant to CHAIR whatever its lemma.

What is not offline: NLTK's POS tagger model (`averaged_perceptron_tagger_eng`, nltk_data only, no PyPI
package ships it). For most table tokens the POS does not change the outcome; for the rest ("skiing" is
"ski" -> skis as a verb, "skiing" as a noun; "apples" is "apple" only as a noun) the table holds the POS that
tagger gives the word out of context. `Lemmatizer("nltk")` runs the reference pipeline itself where NLTK's
data is installed (`auto` picks it then); `metrics.json` records which one scored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
POS_COLUMNS = ("n", "v", "a", "r")
BACKENDS = ("auto", "table", "nltk")


@dataclass(frozen=True)
class CocoWords:
    """The reference's COCO lists: object words (with all synonyms), word -> class, two-word merges."""

    objects: frozenset
    synonym_of: dict = field(hash=False)
    double_words: dict = field(hash=False)


@lru_cache(maxsize=1)
def coco_words() -> CocoWords:
    data = json.loads((DATA / "chair_coco_words.json").read_text(encoding="utf-8"))
    return CocoWords(frozenset(data["objects"]), data["synonym_of"], data["double_words"])


# ---------------------------------------------------------------- tokenisation


@lru_cache(maxsize=1)
def _punkt():
    """NLTK's Punkt sentence splitter with the English model's lists (no nltk_data needed).

    The model's orthographic statistics are left out: they only decide breaks after abbreviations, initials
    and numbers, which never are COCO words, so no COCO word's token changes (a break splits the period off).
    """
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    lists = json.loads((DATA / "punkt_english.json").read_text(encoding="utf-8"))
    params = PunktParameters()
    params.abbrev_types = set(lists["abbrev_types"])
    params.collocations = {tuple(pair) for pair in lists["collocations"]}
    params.sent_starters = set(lists["sent_starters"])
    return PunktSentenceTokenizer(params)


@lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize.destructive import NLTKWordTokenizer

    return NLTKWordTokenizer()


def tokenize(text: str) -> list[str]:
    """`nltk.word_tokenize(text)`: Punkt sentences, then the Treebank word tokenizer on each."""
    tok = _word_tokenizer()
    return [t for sent in _punkt().tokenize(text) for t in tok.tokenize(sent)]


# ---------------------------------------------------------------- lemmatisation


@lru_cache(maxsize=1)
def lemma_table() -> dict[str, tuple[tuple[str, ...], str]]:
    """{token: ((lemma as n, v, a, r), POS used offline or "" when the POS does not matter)}."""
    rows = {}
    lines = (DATA / "chair_lemmas.tsv").read_text(encoding="utf-8").splitlines()
    for line in lines[2:]:  # a comment line and the header
        form, n, v, a, r, pos = line.split("\t")
        rows[form] = ((n, v, a, r), pos)
    return rows


def wordnet_pos(tag: str) -> str:
    """The reference's `get_wordnet_pos(tag) or wordnet.NOUN`."""
    return {"J": "a", "V": "v", "N": "n", "R": "r"}.get(tag[:1], "n")


def nltk_data_available() -> bool:
    """True when NLTK's punkt_tab, English tagger and WordNet are installed (the reference pipeline can run)."""
    try:
        import nltk

        for res in ("tokenizers/punkt_tab/english/", "taggers/averaged_perceptron_tagger_eng/", "corpora/wordnet"):
            try:
                nltk.data.find(res)
            except LookupError:
                nltk.data.find(res.rstrip("/") + ".zip")
        return True
    except (LookupError, ImportError, OSError):
        return False


class Lemmatizer:
    """Tokens -> lemmas as the reference computes them, by one of two backends.

    Args:
        backend: "table" (offline, `chair_lemmas.tsv`), "nltk" (the reference's own calls; needs NLTK's
            data), or "auto" (nltk when its data is installed, else table).
    """

    def __init__(self, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"lemmatizer must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            backend = "nltk" if nltk_data_available() else "table"
        if backend == "nltk" and not nltk_data_available():
            raise ValueError("lemmatizer 'nltk' needs NLTK's punkt_tab, averaged_perceptron_tagger_eng and wordnet "
                             "data installed; use 'table' (offline)")
        self.backend = backend

    def describe(self) -> str:
        """Provenance for metrics.json."""
        if self.backend == "nltk":
            return "nltk: word_tokenize + pos_tag + WordNetLemmatizer (the reference pipeline)"
        return ("table: NLTK tokenizer + WordNet 3.0 lemma table (eval/data/chair_lemmas.tsv); POS of "
                "POS-dependent words from the table, not NLTK's tagger")

    def caption_lemmas(self, caption: str) -> list[str]:
        """Lemmas of `caption.lower()`'s tokens (step 1-2 of the module docstring)."""
        if self.backend == "nltk":
            import nltk
            from nltk.stem import WordNetLemmatizer

            wnl = WordNetLemmatizer()
            tagged = nltk.pos_tag(nltk.word_tokenize(caption.lower()))
            return [wnl.lemmatize(word, pos=wordnet_pos(tag)) for word, tag in tagged]
        table = lemma_table()
        out = []
        for token in tokenize(caption.lower()):
            row = table.get(token)
            # Not in the table: no POS gives it a COCO lemma, so its own text stands in (it is no COCO word).
            out.append(token if row is None else row[0][POS_COLUMNS.index(row[1] or "n")])
        return out


def merge_double_words(words: list[str], double_words: dict) -> list[str]:
    """Step 3: left to right, a pair that is a two-word key becomes its value (both words consumed)."""
    out, i = [], 0
    while i < len(words):
        pair = " ".join(words[i:i + 2])
        if pair in double_words:
            out.append(double_words[pair])
            i += 2
        else:
            out.append(words[i])
            i += 1
    return out


def caption_objects(caption: str, lemmatizer: Lemmatizer) -> tuple[list[str], list[str]]:
    """(object words as written after lemmatisation, their COCO classes), in caption order, repeats kept.

    The reference's `caption_to_words` (`words`, `node_words`).
    """
    coco = coco_words()
    words = merge_double_words(lemmatizer.caption_lemmas(caption), coco.double_words)
    if "toilet" in words and "seat" in words:  # "the seat of the toilet" is no chair
        words = [w for w in words if w != "seat"]
    words = [w for w in words if w in coco.objects]
    return words, [coco.synonym_of[w] for w in words]


_SPACE = re.compile(r"\s+")


def normalise_class(name: str) -> str:
    """A COCO category name ("dining table", "motorcycle") -> its CHAIR class (the synonym list's first word)."""
    name = _SPACE.sub(" ", name.strip())
    return coco_words().synonym_of.get(name, name)
