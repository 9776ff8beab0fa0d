"""Do word-meaning features lift the offline grader? (one-off evidence for RESULTS.md; development questions only)

The residual disagreements with GPT-4.1 are mostly paraphrases ("diverse" for "varied"), so this adds features from
the two sources of word meaning that install offline from a package registry, and measures them with the grader's
own protocol: 5-fold cross-validation grouped by question over the development questions ("fit" + "select"; the
"report" questions are never read), two fold assignments averaged, agreement at decision thresholds 0 / +0.1 / +0.2.

- static embeddings: WordLlama's bundled 256-d token embeddings (``pip install wordllama``; the weights and tokenizer
  ship in the wheel, loaded here from the package directory, nothing downloaded): cosine of the averaged embeddings
  of answer/claim/first sentence vs gold and question, and a soft word alignment (each gold content word's best
  cosine with a claim word; each claim word's best cosine with a gold word);
- the SQuAD passage (``--passages squad_val.json``, SEAL's file: a question's passage found by its split key; 6,370 of
  the 14,506 development rows, 328 of 544 questions, have one: the rest come from SQuAD's training set): the share
  of the claim's new content stems (the grader's, not in question or gold) that the gold's sentence (the one holding
  the gold, else the one sharing most stems with gold and question), it and its neighbours, and the passage say, and
  the best share any other sentence says (sentences cut as the grader cuts them); rows without a passage get NaN
  (HistGradientBoosting routes missing values). A lexical stand-in for context: a paraphrase of the gold drawn
  from the passage ("reduced" for "negative") shares words with the gold's sentence;
- WordNet 3.0 (``--wordnet DIR``: an NLTK data directory holding ``corpora/wordnet``; needs ``pip install nltk``):
  the share of the gold's content words (not in the question) that the claim says with a synonym, derived form,
  pertainym or similar adjective, and with one hypernym/hyponym/holonym step as well.

    OMP_NUM_THREADS=2 python -m benchmarks.grader_semantic_features ../shared/data/grader/squad_gpt41_verdicts_dev.jsonl \\
        --wordnet NLTK_DATA_DIR
    OMP_NUM_THREADS=2 python -m benchmarks.grader_semantic_features ../shared/data/grader/squad_gpt41_verdicts_dev.jsonl \\
        --no-embeddings --passages ../shared/data/squad/squad_val.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from seal_jax.knowledge import grader as G

_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+(?:[.,]\d+)*")
SETTINGS = (  # the shipped setting and the default one of the grid
    {"max_iter": 400, "learning_rate": 0.03, "max_leaf_nodes": 7, "min_samples_leaf": 20, "l2_regularization": 1.0},
    {"max_iter": 200, "learning_rate": 0.03, "max_leaf_nodes": 15, "min_samples_leaf": 20, "l2_regularization": 1.0},
)


def _content_words(text: str, exclude: frozenset[str] = frozenset()) -> list[str]:
    return [w for w in _WORD_RE.findall(text) if w.lower() not in G.STOPWORDS and w.lower() not in exclude]


def embedding_features(rows: list[dict]) -> tuple[np.ndarray, list[str]]:
    """(N, 14) WordLlama features and their names."""
    import wordllama
    from safetensors import safe_open
    from tokenizers import Tokenizer

    root = Path(wordllama.__file__).parent
    tok = Tokenizer.from_file(str(root / "tokenizers" / "l2_supercat_tokenizer_config.json"))
    tok.no_padding()
    with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"), framework="np") as f:
        table = f.get_tensor("embedding.weight").astype(np.float32)  # (vocab 32000, 256)

    def embed(texts: list[str]) -> np.ndarray:  # (len(texts), 256) unit-norm token averages
        out = np.zeros((len(texts), table.shape[1]), np.float32)
        for i, enc in enumerate(tok.encode_batch(texts, add_special_tokens=False)):
            if enc.ids:
                out[i] = table[enc.ids].mean(0)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    parts = [G.answer_parts(r["prediction"]) for r in rows]
    questions = [G.strip_topic(r["question"]) for r in rows]
    ids: dict[str, int] = {}
    gold, quest, claim, text, sent = (np.asarray([ids.setdefault(t, len(ids)) for t in texts]) for texts in (
        [r["gold"] for r in rows], questions, [p[3] for p in parts], [p[0] for p in parts], [p[4] for p in parts]))
    U = embed(list(ids))

    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("nd,nd->n", U[a], U[b])

    cols = [cos(claim, gold), cos(text, gold), cos(sent, gold), cos(claim, quest), cos(gold, quest),
            cos(claim, gold) - cos(claim, quest)]
    names = ["emb_claim_gold", "emb_text_gold", "emb_sentence_gold", "emb_claim_question", "emb_gold_question",
             "emb_claim_gold_minus_question"]
    words = [(_content_words(r["gold"]), _content_words(p[3]), frozenset(_content_words(q.lower())))
             for r, p, q in zip(rows, parts, questions)]
    vocab = sorted({w for g, c, _ in words for w in g + c})
    wid = {w: i for i, w in enumerate(vocab)}
    V = embed(vocab)
    align = np.full((len(rows), 8), -1.0)
    for k, (g, c, q) in enumerate(words):
        if not g or not c:
            continue
        S = V[[wid[w] for w in g]] @ V[[wid[w] for w in c]].T  # (gold words, claim words) cosines
        S = np.where(np.equal.outer([w.lower() for w in g], [w.lower() for w in c]), 1.0, S)
        best_g, best_c = S.max(1), S.max(0)
        align[k, :2] = best_g.mean(), best_g.min()
        novel = np.asarray([w.lower() not in q for w in g])
        if novel.any():
            align[k, 2:5] = best_g[novel].mean(), best_g[novel].min(), np.mean(best_g[novel] > 0.5)
        extra = np.asarray([w.lower() not in q for w in c])
        if extra.any():
            align[k, 5:] = best_c[extra].mean(), best_c[extra].min(), np.sum(best_c[extra] < 0.3)
    names += ["align_gold_mean", "align_gold_min", "align_novel_gold_mean", "align_novel_gold_min",
              "align_novel_gold_share_over_0.5", "align_claim_mean", "align_claim_min", "align_claim_alien_words"]
    return np.column_stack(cols + [align]), names


def wordnet_features(rows: list[dict], data_dir: str) -> tuple[np.ndarray, list[str]]:
    """(N, 4) WordNet features and their names."""
    os.environ["NLTK_DATA"] = data_dir
    from nltk.corpus import wordnet as wn

    @lru_cache(None)
    def close(w: str) -> frozenset[str]:  # the word, its synonyms, derived forms, pertainyms, similar adjectives
        out = {w}
        for s in wn.synsets(w):
            for lemma in s.lemmas():
                out.add(lemma.name().lower())
                out.update(x.name().lower() for x in lemma.derivationally_related_forms() + lemma.pertainyms())
            for r in s.similar_tos() + s.also_sees():
                out.update(x.name().lower() for x in r.lemmas())
        return frozenset(out)

    @lru_cache(None)
    def wider(w: str) -> frozenset[str]:  # plus one hypernym / hyponym / holonym step
        out = set(close(w))
        for s in wn.synsets(w):
            for r in s.hypernyms() + s.hyponyms() + s.member_holonyms() + s.part_holonyms():
                out.update(x.name().lower() for x in r.lemmas())
        return frozenset(out)

    out = np.full((len(rows), 4), -1.0)
    for k, r in enumerate(rows):
        q = frozenset(w.lower() for w in _content_words(G.strip_topic(r["question"])))
        g = [w.lower() for w in _content_words(r["gold"], q)]
        c = [w.lower() for w in _content_words(G.answer_parts(r["prediction"])[3])]
        if not g or not c:
            continue
        stems = {G.stem(w) for w in c}
        c_close, c_wide = set().union(*map(close, c)), set().union(*map(wider, c))
        syn = [bool(close(w) & c_close) or G.stem(w) in stems for w in g]
        wide = [bool(wider(w) & c_wide) or G.stem(w) in stems for w in g]
        out[k] = np.mean(syn), float(all(syn)), np.mean(wide), float(all(wide))
    return out, ["wn_gold_said", "wn_gold_all_said", "wn_gold_said_wide", "wn_gold_all_said_wide"]


def passage_features(rows: list[dict], squad_path: str) -> tuple[np.ndarray, list[str]]:
    """(N, 5) passage-context features (NaN where the question's passage is not in the file) and their names."""
    passages: dict[str, str] = {}
    for p in json.load(open(squad_path)):
        for q in p["questions"]:
            passages.setdefault(G.split_key(q["question"]), p["context"])

    def words(text: str) -> set[str]:  # the grader's content stems of a text
        return G._View(text).content

    out = np.full((len(rows), 5), np.nan)
    for k, r in enumerate(rows):
        context = passages.get(G.split_key(r["question"]))
        if context is None:
            continue
        known = words(G.strip_topic(r["question"])) | words(r["gold"])
        new = words(G.answer_parts(r["prediction"])[3]) - known
        texts = G._SENT_RE.split(context)
        sentences = [words(s) - known for s in texts]
        at = next((i for i, s in enumerate(texts) if r["gold"].lower() in s.lower()), None)
        if at is None:
            at = int(np.argmax([len(s & known) for s in sentences]))
        n = max(len(new), 1)
        near = set().union(*sentences[max(0, at - 1):at + 2])
        others = [len(new & s) / n for i, s in enumerate(sentences) if i != at]
        out[k] = (len(new & sentences[at]) / n, len(new & near) / n, len(new & set().union(*sentences)) / n,
                  max(others, default=0.0), len(new))
    return out, ["ctx_gold_sentence", "ctx_gold_neighbourhood", "ctx_passage", "ctx_best_other_sentence",
                 "ctx_new_words"]


def cross_validated(X: np.ndarray, y: np.ndarray, bucket: np.ndarray, has: np.ndarray, hp: dict) -> np.ndarray:
    """Out-of-fold agreement at thresholds 0 / 0.1 / 0.2, averaged over two fold assignments (the grader's, bucket %
    5, and a second one); empty predictions count as "no"."""
    scores = []
    for fold in (bucket % G.CV_FOLDS, (bucket + bucket // G.CV_FOLDS) % G.CV_FOLDS):
        m = G.out_of_fold_margins(X, y, fold, has, hp)
        scores.append([np.mean((m > t) == y) for t in (0.0, 0.1, 0.2)])
    return np.mean(scores, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("verdicts")
    ap.add_argument("--no-embeddings", action="store_true", help="skip the WordLlama features (needs wordllama)")
    ap.add_argument("--passages", metavar="SQUAD_JSON", help="SEAL's SQuAD file (title, context, questions)")
    ap.add_argument("--wordnet", metavar="NLTK_DATA_DIR", help="NLTK data directory holding corpora/wordnet")
    args = ap.parse_args()
    rows = [r for r in G.load_verdicts(args.verdicts) if G.split_of(r["question"]) in G.DEVELOPMENT_PARTS]
    y = np.asarray([bool(r["gpt41_correct"]) for r in rows])
    has = np.asarray([bool(r["prediction"].strip()) for r in rows])
    bucket = np.asarray([G.split_bucket(r["question"]) for r in rows])
    print(f"development rows: {len(rows)} over {len({G.split_key(r['question']) for r in rows})} questions")
    t0 = time.perf_counter()
    base = G.feature_matrix([r["question"] for r in rows], [r["gold"] for r in rows], [r["prediction"] for r in rows])
    base[~has] = 0.0  # as --fit: an empty prediction is "no" before any feature is read
    print(f"shipped features: {base.shape[1]} ({time.perf_counter() - t0:.1f}s)")
    sets = {"shipped features": base}
    if not args.no_embeddings:
        t0 = time.perf_counter()
        emb, emb_names = embedding_features(rows)
        emb[~has] = 0.0
        print(f"embedding features: {len(emb_names)} ({time.perf_counter() - t0:.1f}s)")
        sets["+ embeddings"] = np.hstack([base, emb])
    if args.passages:
        t0 = time.perf_counter()
        ctx, ctx_names = passage_features(rows, args.passages)
        found = ~np.isnan(ctx[:, 0])
        ctx[~has] = 0.0
        print(f"passage features: {len(ctx_names)} ({time.perf_counter() - t0:.1f}s); rows with a passage: "
              f"{found.sum()} over {len({G.split_key(r['question']) for r, f in zip(rows, found) if f})} questions")
        sets["+ passage"] = np.hstack([base, ctx])
    if args.wordnet:
        t0 = time.perf_counter()
        wnf, wn_names = wordnet_features(rows, args.wordnet)
        wnf[~has] = 0.0
        print(f"WordNet features: {len(wn_names)} ({time.perf_counter() - t0:.1f}s)")
        sets["+ WordNet"] = np.hstack([base, wnf])
        if not args.no_embeddings:
            sets["+ embeddings + WordNet"] = np.hstack([base, emb, wnf])
    for hp in SETTINGS:
        for name, X in sets.items():
            s = cross_validated(X, y, bucket, has, hp)
            print(f"{hp['max_iter']} iterations, {hp['max_leaf_nodes']} leaves | {name:24s} | "
                  + " / ".join(f"{v:.4f}" for v in s), flush=True)
        if args.passages:  # the same two sets on the rows whose passage was found, cross-validated among themselves
            for name, X in (("shipped features", base), ("+ passage", sets["+ passage"])):
                s = cross_validated(X[found], y[found], bucket[found], has[found], hp)
                print(f"{hp['max_iter']} iterations, {hp['max_leaf_nodes']} leaves | {name:24s} | rows with a "
                      "passage | " + " / ".join(f"{v:.4f}" for v in s), flush=True)


if __name__ == "__main__":
    main()
