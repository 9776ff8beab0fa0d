"""A seeded synthetic world for the embedded SEAL demo: invented people and companies, their facts, passages that state
those facts in many phrasings, questions with gold answers, and "implications" self-edits of mixed quality.

    world = build_world(seed=0)
    world.known          # entities the demo model is pretrained on (passages, QA, implications)
    world.copy_only      # entities that appear only inside implications examples (teaches copying, not recall)
    world.new_train      # NEW entities: ReST-EM training passages (SEAL format via `to_passages`)
    world.new_eval       # NEW entities: held-out evaluation passages
    python -m seal_jax.demo_world --seed 0 --out DIR    # writes DIR/{train,eval,known}.json (SEAL format)

Everything is drawn from one `random.Random(seed)` in a fixed order over lists (never sets or dict-hash order), so the
same seed gives the same world on every machine and Python version.

The world is built so that the known science of knowledge incorporation can show up in a model of a few million
parameters: a passage states an entity's facts once, mostly through pronouns after the first sentence ("She worked
as ..."), while the questions ask about the named entity ("What was Velmora Quist's profession?"). Good implications
restate every fact as its own sentence with the full name; partial ones restate some facts; poor ones are on-topic
filler without facts. The pretraining corpus mixes the three, so the model's own self-edits vary in quality.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
from typing import Sequence

from seal_jax.knowledge.data import Passage, Question, save_passages
from seal_jax.knowledge.prompts import format_answer_prompt, format_self_edit_prompt

__all__ = ["Entity", "World", "build_world", "passage_text", "restatement", "implications", "filler_line",
           "question_for", "qa_pairs", "to_passages", "ATTRIBUTES", "IMPLICATION_QUALITIES"]

# ----------------------------------------------------------------------------------------------- vocabulary
_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v",
           "z", "th", "sh", "c", "j", "w", "pl", "fl", "sk", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "ia", "y"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "x", "st", "v", "ck"]
_CITY_SUFFIXES = ["", "", "", "holm", "ford", "wick", "mere", "port", "vale", "burg", "stead", "haven"]
_COMPANY_SUFFIXES = ["Works", "Mills", "Foundry", "Trading", "Industries", "Company", "Labs", "Brothers", "Guild",
                     "Partners"]
PROFESSIONS = ["baker", "cartographer", "glassblower", "weaver", "astronomer", "carpenter", "potter", "architect",
               "botanist", "sculptor", "surgeon", "tailor", "violinist", "engineer", "librarian", "blacksmith",
               "chemist", "sailor", "painter", "journalist", "pilot", "gardener", "jeweler", "translator"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "teal", "silver", "gold", "crimson", "violet",
           "brown", "indigo", "amber"]
PRODUCTS = ["lanterns", "bicycles", "ink", "clocks", "rope", "umbrellas", "pianos", "soap", "maps", "telescopes",
            "candles", "boots", "kites", "bells", "paper", "tea", "compasses", "saddles", "glassware", "chairs"]

ATTRIBUTES = {
    "person": ("city", "year", "profession", "employer", "colour"),
    "company": ("city", "year", "product", "founder", "colour"),
}
IMPLICATION_QUALITIES = ("good", "partial", "poor")


@dataclasses.dataclass(frozen=True)
class Entity:
    kind: str  # "person" | "company"
    name: str
    facts: tuple[tuple[str, str], ...]  # (attribute, value), in ATTRIBUTES order
    pronoun: str  # "she" | "he" | "it"

    def fact(self, attr: str) -> str:
        return dict(self.facts)[attr]

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(a for a, _ in self.facts)


@dataclasses.dataclass
class World:
    seed: int
    cities: list[str]
    companies: list[str]
    known: list[Entity]
    copy_only: list[Entity]
    new_train: list[Entity]
    new_eval: list[Entity]


# ----------------------------------------------------------------------------------------------- names
def _syllable(rng: random.Random, coda: bool = True) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if coda else "")


def _word(rng: random.Random, n: int) -> str:
    return "".join(_syllable(rng, coda=(i == n - 1)) for i in range(n)).capitalize()


def _unique(rng: random.Random, make, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        w = make(rng)
        if w not in taken and 3 <= len(w) <= 16:
            taken.add(w)
            out.append(w)
    return out


# ----------------------------------------------------------------------------------------------- the world
def build_world(seed: int = 0, n_known: int = 240, n_copy_only: int = 150, n_new_train: int = 64,
                n_new_eval: int = 64, n_cities: int = 40, n_companies: int = 30, n_stems: int = 60,
                n_first_names: int = 80, n_surnames: int = 80, company_fraction: float = 0.2) -> World:
    """Draw the world. Entity kinds are mixed (about `company_fraction` companies); all splits share the value pools
    (cities, professions, colours, ...), so only the entity-value pairing of the new entities is new."""
    rng = random.Random(seed)
    taken: set[str] = set()
    cities: list[str] = []
    while len(cities) < n_cities:  # no city name is a prefix of another (graders would accept "Wiathholm" for "Wiath")
        c = _unique(rng, lambda r: _word(r, r.choice([1, 2, 2])) + r.choice(_CITY_SUFFIXES), 1, taken)[0]
        if not any(c.startswith(o) or o.startswith(c) for o in cities):
            cities.append(c)
    # Names are built from small pools of invented words, so each pool word is frequent in the corpus (one BPE token)
    # and a new entity's name is a new combination of familiar pieces, as real names are.
    stems = _unique(rng, lambda r: _word(r, 2), n_stems, taken)
    first_names = _unique(rng, lambda r: _word(r, 2), n_first_names, taken)
    surnames = _unique(rng, lambda r: _word(r, r.choice([1, 2])), n_surnames, taken)
    companies = _unique(rng, lambda r: r.choice(stems) + " " + r.choice(_COMPANY_SUFFIXES), n_companies, taken)

    def person_name(r: random.Random) -> str:
        return f"{r.choice(first_names)} {r.choice(surnames)}"

    def company_name(r: random.Random) -> str:
        return r.choice(stems) + " " + r.choice(_COMPANY_SUFFIXES)

    def draw(n: int) -> list[Entity]:
        out = []
        for _ in range(n):
            if rng.random() < company_fraction:
                name = _unique(rng, company_name, 1, taken)[0]
                facts = (("city", rng.choice(cities)), ("year", str(rng.randint(1820, 1990))),
                         ("product", rng.choice(PRODUCTS)), ("founder", person_name(rng)),
                         ("colour", rng.choice(COLOURS)))
                out.append(Entity("company", name, facts, "it"))
            else:
                name = _unique(rng, person_name, 1, taken)[0]
                facts = (("city", rng.choice(cities)), ("year", str(rng.randint(1800, 1990))),
                         ("profession", rng.choice(PROFESSIONS)), ("employer", rng.choice(companies)),
                         ("colour", rng.choice(COLOURS)))
                out.append(Entity("person", name, facts, rng.choice(["she", "he"])))
        return out

    # The NEW entities are drawn first, so the SEAL splits do not change with the size of the pretraining world.
    new_eval = draw(n_new_eval)
    new_train = draw(n_new_train)
    known = draw(n_known)
    copy_only = draw(n_copy_only)
    return World(seed, cities, companies, known, copy_only, new_train, new_eval)


# ----------------------------------------------------------------------------------------------- language
def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


# Per attribute: verb phrases that follow a subject ("Velmora Quist" / "She"), stating the fact.
_PERSON_VP = {
    "city": ["was born in {v}", "was born in the city of {v}", "is a native of {v}", "came into the world in {v}"],
    "year": ["was born in {v}", "was born in the year {v}", "arrived in the world in {v}"],
    "profession": ["worked as {a}", "was {a} by trade", "earned a living as {a}", "trained as {a}"],
    "employer": ["worked for {v}", "was employed by {v}", "spent many years at {v}", "held a job at {v}"],
    "colour": ["loved the colour {v}", "had {v} as a favourite colour", "always preferred the colour {v}"],
}
_COMPANY_VP = {
    "city": ["is based in {v}", "has its headquarters in {v}", "is headquartered in {v}", "operates from {v}"],
    "year": ["was founded in {v}", "was established in {v}", "opened its doors in {v}"],
    "product": ["makes {v}", "is known for its {v}", "produces {v}", "sells {v}"],
    "founder": ["was founded by {v}", "was started by {v}", "owes its existence to {v}"],
    "colour": ["uses {v} as its colour", "paints its logo {v}", "has a {v} logo"],
}
# Possessive statements ("Her favourite colour was teal."), used for variety in passages and restatements.
_PERSON_POSS = {"colour": ["{P} favourite colour was {v}"], "profession": ["{P} profession was {v}"],
                "employer": ["{P} employer was {v}"], "city": ["{P} birthplace was {v}"],
                "year": ["{P} year of birth was {v}"]}
_COMPANY_POSS = {"colour": ["{P} logo is {v}"], "city": ["{P} headquarters are in {v}"],
                 "product": ["{P} main product is {v}"], "founder": ["{P} founder was {v}"],
                 "year": ["{P} founding year was {v}"]}
_POSSESSIVE = {"she": "Her", "he": "His", "it": "Its"}

_QUESTIONS = {
    "person": {
        "city": ["Where was {n} born?", "In which city was {n} born?"],
        "year": ["In what year was {n} born?", "When was {n} born?"],
        "profession": ["What was {n}'s profession?", "What did {n} do for a living?"],
        "employer": ["Which company did {n} work for?", "Who employed {n}?"],
        "colour": ["What was {n}'s favourite colour?", "Which colour did {n} like best?"],
    },
    "company": {
        "city": ["Where is {n} based?", "In which city is {n} headquartered?"],
        "year": ["In what year was {n} founded?", "When was {n} founded?"],
        "product": ["What does {n} make?", "What product is {n} known for?"],
        "founder": ["Who founded {n}?", "Who started {n}?"],
        "colour": ["What colour is the logo of {n}?", "Which colour does {n} use?"],
    },
}

_FILLER = [
    "{n} is described in the passage.", "The passage is about {n}.", "{n} is an interesting subject.",
    "There is more to learn about {n}.", "Many people have heard of {n}.", "{n} appears in this text.",
    "The text gives some details about {n}.", "{n} is worth remembering.", "Readers may want to know about {n}.",
    "The passage mentions {n} several times.", "{n} has a history.", "Some facts about {n} are given.",
]


def _vp(e: Entity, attr: str, rng: random.Random) -> str:
    table = _PERSON_VP if e.kind == "person" else _COMPANY_VP
    v = e.fact(attr)
    return rng.choice(table[attr]).format(v=v, a=_article(v))


def _poss(e: Entity, attr: str, rng: random.Random, subject: str) -> str:
    table = _PERSON_POSS if e.kind == "person" else _COMPANY_POSS
    return rng.choice(table[attr]).format(P=subject, v=e.fact(attr))


def restatement(e: Entity, attr: str, rng: random.Random) -> str:
    """One fact as a standalone sentence with the full name as subject (a good implication line)."""
    table = _PERSON_POSS if e.kind == "person" else _COMPANY_POSS
    if attr in table and rng.random() < 0.25:
        return _poss(e, attr, rng, f"{e.name}'s") + "."
    return f"{e.name} {_vp(e, attr, rng)}."


def passage_text(e: Entity, rng: random.Random) -> str:
    """A passage stating every fact once, in a random order and phrasing: the first sentence names the entity, later
    ones mostly refer to it by pronoun; clauses are sometimes joined with "and"."""
    attrs = list(e.attributes)
    rng.shuffle(attrs)
    pron = e.pronoun.capitalize()
    sentences: list[str] = []
    i = 0
    while i < len(attrs):
        first = not sentences
        subject = e.name if first else (pron if rng.random() < 0.8 else ("The company" if e.kind == "company"
                                                                          else "The " + e.fact("profession")
                                                                          if "profession" not in attrs[i:]
                                                                          else pron))
        take = 2 if (i + 1 < len(attrs) and rng.random() < 0.45) else 1
        chunk = attrs[i:i + take]
        if take == 1 and not first and rng.random() < 0.3:
            sentences.append(_poss(e, chunk[0], rng, _POSSESSIVE[e.pronoun]) + ".")
        else:
            sentences.append(f"{subject} " + " and ".join(_vp(e, a, rng) for a in chunk) + ".")
        i += take
    if rng.random() < 0.3:
        sentences.insert(0, rng.choice(["This is a short record.", "Here is a brief account.",
                                        "The archive keeps a note on this.", "A short profile follows."]))
    return " ".join(sentences)


def filler_line(e: Entity, rng: random.Random) -> str:
    return rng.choice(_FILLER).format(n=e.name)


def implications(e: Entity, quality: str, rng: random.Random) -> str:
    """A self-edit completion: one line per attribute. good = every fact restated with the full name; partial = two
    facts restated, the rest filler; poor = filler only (on topic, no facts)."""
    attrs = list(e.attributes)
    rng.shuffle(attrs)
    n_facts = {"good": len(attrs), "partial": 2, "poor": 0}[quality]
    facts = attrs[:n_facts]
    lines = [restatement(e, a, rng) for a in facts]
    fill = list(_FILLER)
    rng.shuffle(fill)
    lines += [f.format(n=e.name) for f in fill[:len(attrs) - n_facts]]
    if quality == "partial":
        rng.shuffle(lines)
    return "\n".join(lines)


def question_for(e: Entity, attr: str, rng: random.Random) -> str:
    return rng.choice(_QUESTIONS[e.kind][attr]).format(n=e.name)


def qa_pairs(e: Entity, rng: random.Random) -> list[tuple[str, str]]:
    return [(question_for(e, a, rng), v) for a, v in e.facts]


def to_passages(entities: Sequence[Entity], seed: int, salt: str) -> list[Passage]:
    """SEAL-format passages (one passage and one question per attribute each), deterministic in (seed, salt)."""
    rng = random.Random(f"{seed}:{salt}")
    out = []
    for e in entities:
        ctx = passage_text(e, rng)
        qs = tuple(Question(q, a) for q, a in qa_pairs(e, rng))
        out.append(Passage(title=e.name, context=ctx, questions=qs))
    return out


# ----------------------------------------------------------------------------------------------- pretraining corpus
def qa_entities(world: World, qa_fraction: float = 0.75) -> list[Entity]:
    """The known entities whose QA is in the pretraining corpus (the rest measure extraction without QA)."""
    return world.known[:int(round(qa_fraction * len(world.known)))]


def _count(rng: random.Random, expected: float) -> int:
    """An integer with mean `expected` (the fraction is a coin flip)."""
    whole = int(expected)
    return whole + (rng.random() < expected - whole)


def pretraining_documents(world: World, passages_per_entity: float = 2, restatements_per_fact: float = 2,
                          qa_per_fact: float = 0.35, implications_per_entity: float = 0.5,
                          implications_per_copy_entity: float = 1, qa_fraction: float = 0.75,
                          quality_weights: Sequence[float] = (1.0, 1.0, 1.0), epoch: int = 0) -> list[dict]:
    """One epoch of pretraining documents (a fresh draw of phrasings per `epoch`): dicts {"kind", "text"} where
    "text" is the full training text (no eos). Kinds: passage ("{title}\\n{passage}", as TTT sees it),
    fact ("{title}\\n{restatement}"), qa (the exact answer prompt + gold answer; only for `qa_entities`),
    implications (the exact self-edit prompt + a completion of drawn quality). Fractional counts are expected
    counts per epoch. QA is kept rare next to the statements on purpose: the cheapest way for the model to answer is
    then to look up what it read, not to memorise each question."""
    rng = random.Random(f"{world.seed}:pretrain:{epoch}")
    docs: list[dict] = []
    with_qa = {e.name for e in qa_entities(world, qa_fraction)}
    for e in world.known:
        for _ in range(_count(rng, passages_per_entity)):
            docs.append({"kind": "passage", "text": f"{e.name}\n{passage_text(e, rng)}"})
        for a in e.attributes:
            for _ in range(_count(rng, restatements_per_fact)):
                docs.append({"kind": "fact", "text": f"{e.name}\n{restatement(e, a, rng)}"})
            if e.name in with_qa:
                for _ in range(_count(rng, qa_per_fact)):
                    docs.append({"kind": "qa", "text": format_answer_prompt(e.name, question_for(e, a, rng))
                                 + e.fact(a)})
        for _ in range(_count(rng, implications_per_entity)):
            docs.append({"kind": "implications", "text": _implication_doc(e, rng, quality_weights)})
    for e in world.copy_only:
        for _ in range(_count(rng, implications_per_copy_entity)):
            docs.append({"kind": "implications", "text": _implication_doc(e, rng, quality_weights)})
    rng.shuffle(docs)
    return docs


def _implication_doc(e: Entity, rng: random.Random, weights: Sequence[float]) -> str:
    p = Passage(title=e.name, context=passage_text(e, rng), questions=())
    quality = rng.choices(IMPLICATION_QUALITIES, weights=weights)[0]
    return format_self_edit_prompt(p, "implications") + implications(e, quality, rng)


def tokenizer_corpus(world: World) -> list[str]:
    """Texts the demo tokenizer is trained on: the known world only (three epochs of documents)."""
    return [d["text"] for ep in range(3) for d in pretraining_documents(world, epoch=ep)]


# ----------------------------------------------------------------------------------------------- CLI
def write_seal_files(world: World, out: str) -> dict[str, str]:
    """train.json / eval.json (NEW entities, SEAL format) and known.json (the pretraining entities' passages)."""
    os.makedirs(out, exist_ok=True)
    paths = {"train": os.path.join(out, "train.json"), "eval": os.path.join(out, "eval.json"),
             "known": os.path.join(out, "known.json")}
    save_passages(paths["train"], to_passages(world.new_train, world.seed, "new_train"))
    save_passages(paths["eval"], to_passages(world.new_eval, world.seed, "new_eval"))
    save_passages(paths["known"], to_passages(world.known, world.seed, "known"))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--show", type=int, default=0, help="print this many example documents of each kind")
    args = ap.parse_args(argv)
    world = build_world(args.seed)
    paths = write_seal_files(world, args.out)
    print(json.dumps({"entities": {"known": len(world.known), "copy_only": len(world.copy_only),
                                   "new_train": len(world.new_train), "new_eval": len(world.new_eval)},
                      "files": paths}, indent=1))
    if args.show:
        docs = pretraining_documents(world)
        for kind in ("passage", "fact", "qa", "implications"):
            for d in [d for d in docs if d["kind"] == kind][:args.show]:
                print(f"----- {kind}\n{d['text']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
