"""A seeded synthetic world for the embedded SEAL demo: invented people and companies, their facts, passages that state
those facts in many phrasings, questions with gold answers, and "implications" self-edits of mixed quality.

    world = build_world(seed=0)
    world.known          # entities the demo model is pretrained on (passages, statements, QA)
    fresh_entities(world, n, rng)   # throw-away entities for passage -> implications examples (drawn every epoch)
    world.new_train      # NEW entities: ReST-EM training passages (SEAL format via `to_passages`)
    world.new_eval       # NEW entities: held-out evaluation passages
    python -m seal_jax.demo_world --seed 0 --out DIR    # writes DIR/{train,eval,known}.json (SEAL format)

Everything is drawn from one `random.Random(seed)` in a fixed order over lists (never sets or dict-hash order), so the
same seed gives the same world on every machine and Python version.

The world is built so that the known science of knowledge incorporation can show up in a model of a few million
parameters: a passage states an entity's facts once, in one of several phrasings and mostly through pronouns after the
first sentence ("She earned a living as ..."), while the questions ask about the named entity ("What was Velmora
Quist's profession?"). Every fact also has one *canonical statement*, the full name + a fixed verb phrase + the value
("Velmora Quist worked as a weaver."). The demo model answers a question with that statement (it is pretrained on
QA in this form). Implications (the self-edit) restate facts one per line with the full name, in the passage's own
words ("He arrived in the world in 1940" -> "Velmora Quist arrived in the world in 1940."), so writing them is copying,
not recalling; their quality is how many of the passage's facts they restate (0-5, the rest is on-topic filler). The
pretraining corpus mixes all qualities, so the model's own self-edits vary in quality.
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
from seal_jax.runs import ArgumentParser

__all__ = ["Entity", "World", "build_world", "passage_text", "passage_with_notes", "passages_with_notes",
           "restatement", "implications", "is_filler", "filler_line",
           "question_for", "qa_pairs", "to_passages", "statement", "statement_stem", "fresh_entities", "ATTRIBUTES",
           "IMPLICATION_QUALITIES"]

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
IMPLICATION_QUALITIES = (0, 1, 2, 3, 4, 5)  # facts restated (of 5)


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
    new_train: list[Entity]
    new_eval: list[Entity]
    first_names: list[str]
    surnames: list[str]
    stems: list[str]
    names: frozenset[str]  # every entity name above (fresh entities never reuse one)


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
def _draw_entities(rng: random.Random, n: int, *, cities: Sequence[str], companies: Sequence[str],
                   first_names: Sequence[str], surnames: Sequence[str], stems: Sequence[str], taken: set[str],
                   company_fraction: float = 0.2) -> list[Entity]:
    """`n` entities with names not in `taken` (added to it): about `company_fraction` companies, the rest people."""

    def person_name(r: random.Random) -> str:
        return f"{r.choice(first_names)} {r.choice(surnames)}"

    def company_name(r: random.Random) -> str:
        return r.choice(stems) + " " + r.choice(_COMPANY_SUFFIXES)

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


def build_world(seed: int = 0, n_known: int = 240, n_new_train: int = 64, n_new_eval: int = 64, n_cities: int = 40,
                n_companies: int = 30, n_stems: int = 60, n_first_names: int = 80, n_surnames: int = 80,
                company_fraction: float = 0.2) -> World:
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
    pools = dict(cities=cities, companies=companies, first_names=first_names, surnames=surnames, stems=stems)

    def draw(n: int) -> list[Entity]:
        return _draw_entities(rng, n, taken=taken, company_fraction=company_fraction, **pools)

    # The NEW entities are drawn first, so the SEAL splits do not change with the size of the pretraining world.
    new_eval = draw(n_new_eval)
    new_train = draw(n_new_train)
    known = draw(n_known)
    names = frozenset(e.name for e in new_eval + new_train + known)
    return World(seed, cities, companies, known, new_train, new_eval, first_names, surnames, stems, names)


def fresh_entities(world: World, n: int, rng: random.Random) -> list[Entity]:
    """`n` throw-away entities from the world's pools whose names are none of the world's entities (nor each other):
    drawn anew for every pretraining epoch, so passage -> implications examples can only be learned by copying the
    facts out of the passage, never by recalling them."""
    return _draw_entities(rng, n, taken=set(world.names), cities=world.cities, companies=world.companies,
                          first_names=world.first_names, surnames=world.surnames, stems=world.stems)


def extra_eval_entities(world: World, n: int) -> list[Entity]:
    """`n` more held-out entities, drawn after the world (its own seeded stream), so the shipped model's splits and
    pretraining are unchanged. Unlike `new_eval`, their names are not reserved from pretraining's throw-away entities:
    a name may have appeared there, with facts drawn afresh every epoch."""
    return fresh_entities(world, n, random.Random(f"{world.seed}:extra_eval"))


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
    "colour": ["uses the colour {v}", "paints its logo {v}", "has a {v} logo"],
}
# The canonical statement of each attribute (one fixed verb phrase, the value last): what implications list and what
# the demo model answers a question with. Each is also one of the passage phrasings above.
_PERSON_CANON = {"city": "was born in {v}", "year": "was born in the year {v}", "profession": "worked as {a}",
                 "employer": "worked for {v}", "colour": "loved the colour {v}"}
_COMPANY_CANON = {"city": "is based in {v}", "year": "was founded in {v}", "product": "makes {v}",
                  "founder": "was founded by {v}", "colour": "uses the colour {v}"}
# Possessive statements ("Her favourite colour was teal."), used for variety in passages and restatements.
_PERSON_POSS = {"colour": ["{P} favourite colour was {v}"], "profession": ["{P} profession was {v}"],
                "employer": ["{P} employer was {v}"], "city": ["{P} birthplace was {v}"],
                "year": ["{P} year of birth was {v}"]}
_COMPANY_POSS = {"colour": ["{P} logo is {v}"], "city": ["{P} headquarters are in {v}"],
                 "product": ["{P} main product is {v}"], "founder": ["{P} founder was {v}"],
                 "year": ["{P} founding year was {v}"]}
_POSSESSIVE = {"she": "Her", "he": "His", "it": "Its"}


def _genitive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


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


def _poss_template(e: Entity, attr: str, rng: random.Random) -> str:
    """A possessive phrasing of `attr` with slots {P} (the possessor) and {v} (the value)."""
    return rng.choice((_PERSON_POSS if e.kind == "person" else _COMPANY_POSS)[attr])


def restatement(e: Entity, attr: str, rng: random.Random) -> str:
    """One fact as a standalone sentence with the full name as subject (a good implication line)."""
    table = _PERSON_POSS if e.kind == "person" else _COMPANY_POSS
    if attr in table and rng.random() < 0.25:
        return _poss_template(e, attr, rng).format(P=_genitive(e.name), v=e.fact(attr)) + "."
    return f"{e.name} {_vp(e, attr, rng)}."


def passage_with_notes(e: Entity, rng: random.Random) -> tuple[str, dict[str, str]]:
    """A passage stating every fact once, in a random order and phrasing (the first sentence names the entity, later
    ones mostly refer to it by pronoun; clauses are sometimes joined with "and"), and, per attribute, the note that
    restates the passage's own wording of that fact as a sentence with the full name ("He arrived in the world in
    1940" -> "Jicast Thoust arrived in the world in 1940."): what a good implication line looks like."""
    attrs = list(e.attributes)
    rng.shuffle(attrs)
    pron = e.pronoun.capitalize()
    sentences: list[str] = []
    notes: dict[str, str] = {}
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
            template = _poss_template(e, chunk[0], rng)
            value = e.fact(chunk[0])
            sentences.append(template.format(P=_POSSESSIVE[e.pronoun], v=value) + ".")
            notes[chunk[0]] = template.format(P=_genitive(e.name), v=value) + "."
        else:
            vps = [_vp(e, a, rng) for a in chunk]
            sentences.append(f"{subject} " + " and ".join(vps) + ".")
            notes.update({a: f"{e.name} {vp}." for a, vp in zip(chunk, vps)})
        i += take
    if rng.random() < 0.3:
        sentences.insert(0, rng.choice(["This is a short record.", "Here is a brief account.",
                                        "The archive keeps a note on this.", "A short profile follows."]))
    return " ".join(sentences), notes


def passage_text(e: Entity, rng: random.Random) -> str:
    """The passage of `passage_with_notes`."""
    return passage_with_notes(e, rng)[0]


def filler_line(e: Entity, rng: random.Random) -> str:
    return rng.choice(_FILLER).format(n=e.name)


def statement(e: Entity, attr: str) -> str:
    """The canonical statement of one fact: full name, the attribute's fixed verb phrase, the value last."""
    table = _PERSON_CANON if e.kind == "person" else _COMPANY_CANON
    v = e.fact(attr)
    return f"{e.name} " + table[attr].format(v=v, a=_article(v)) + "."


def statement_stem(e: Entity, attr: str) -> str:
    """The canonical statement up to (not including) the space before the value: what a recall probe completes."""
    return statement(e, attr)[:-len(e.fact(attr)) - 2]


def implications(e: Entity, notes: dict[str, str], quality: int, rng: random.Random) -> str:
    """A self-edit completion of five lines: `quality` (0-5) randomly chosen facts as their `notes` (from
    `passage_with_notes`: the passage's own wording with the full name), in passage order, and on-topic filler
    lines without facts at random places in between."""
    if not 0 <= quality <= len(notes):
        raise ValueError(f"implications quality must be 0..{len(notes)} facts, got {quality!r}")
    chosen = set(rng.sample(list(notes), quality))
    lines = [n for a, n in notes.items() if a in chosen]
    fill = list(_FILLER)
    rng.shuffle(fill)
    for f in fill[:len(notes) - quality]:
        lines.insert(rng.randint(0, len(lines)), f.format(n=e.name))
    return "\n".join(lines)


def is_filler(e: Entity, line: str) -> bool:
    """Whether `line` is one of the on-topic filler lines about `e` (no fact)."""
    return line.strip().replace(e.name, "{n}") in _FILLER


def question_for(e: Entity, attr: str, rng: random.Random) -> str:
    return rng.choice(_QUESTIONS[e.kind][attr]).format(n=e.name).replace(f"{e.name}'s", _genitive(e.name))


def qa_pairs(e: Entity, rng: random.Random) -> list[tuple[str, str]]:
    return [(question_for(e, a, rng), v) for a, v in e.facts]


def passages_with_notes(entities: Sequence[Entity], seed: int, salt: str) -> list[tuple[Passage, dict[str, str]]]:
    """SEAL-format passages (one passage and one question per attribute each), deterministic in (seed, salt), each
    with the notes of `passage_with_notes` (what good implications of that exact passage would say)."""
    rng = random.Random(f"{seed}:{salt}")
    out = []
    for e in entities:
        ctx, notes = passage_with_notes(e, rng)
        qs = tuple(Question(q, a) for q, a in qa_pairs(e, rng))
        out.append((Passage(title=e.name, context=ctx, questions=qs), notes))
    return out


def to_passages(entities: Sequence[Entity], seed: int, salt: str) -> list[Passage]:
    """The passages of `passages_with_notes`."""
    return [p for p, _ in passages_with_notes(entities, seed, salt)]


# ----------------------------------------------------------------------------------------------- pretraining corpus
def qa_entities(world: World, qa_fraction: float = 0.75) -> list[Entity]:
    """The known entities whose QA is in the pretraining corpus (the rest measure extraction without QA)."""
    return world.known[:int(round(qa_fraction * len(world.known)))]


def _count(rng: random.Random, expected: float) -> int:
    """An integer with mean `expected` (the fraction is a coin flip)."""
    whole = int(expected)
    return whole + (rng.random() < expected - whole)


def pretraining_documents(world: World, passages_per_entity: float = 1, statements_per_fact: float = 1,
                          restatements_per_fact: float = 0.5, qa_per_fact: float = 0.5, n_implications: int = 150,
                          n_notes: int = 0, qa_fraction: float = 0.75,
                          quality_weights: Sequence[float] = (1, 1, 1, 1, 1, 1), epoch: int = 0) -> list[dict]:
    """One epoch of pretraining documents (a fresh draw of phrasings per `epoch`): dicts {"kind", "text"} where
    "text" is the full training text (no eos). Fractional counts are expected counts per epoch. Kinds:

    * passage: "{title}\\n{passage}" (the layout TTT trains on) about a known entity, phrasings drawn afresh;
    * fact: "{title}\\n{statement}", the canonical statement of one fact (`statements_per_fact`) or another phrasing
      of it (`restatements_per_fact`);
    * qa: the exact answer prompt + the canonical statement of the asked fact, for `qa_entities` only (the other
      known entities measure whether a question retrieves facts the model only read);
    * implications (`n_implications` per epoch): the exact self-edit prompt about a *fresh* entity
      (`fresh_entities`, new every epoch) + a completion restating 0-5 of its facts in the passage's own words with
      the full name (`implications`), drawn with `quality_weights` (over 0, 1, ..., 5 facts);
    * notes (`n_notes` per epoch): "{title}\\n{passage}\\n\\n" + every fact's note, about another fresh entity: the
      same copying as good implications, without the instruction (a denser copying signal per token)."""
    if len(quality_weights) != len(IMPLICATION_QUALITIES):
        raise ValueError(f"quality_weights needs {len(IMPLICATION_QUALITIES)} weights (0..5 facts), "
                         f"got {len(quality_weights)}")
    rng = random.Random(f"{world.seed}:pretrain:{epoch}")
    docs: list[dict] = []
    with_qa = {e.name for e in qa_entities(world, qa_fraction)}
    for e in world.known:
        for _ in range(_count(rng, passages_per_entity)):
            docs.append({"kind": "passage", "text": f"{e.name}\n{passage_text(e, rng)}"})
        for a in e.attributes:
            for _ in range(_count(rng, statements_per_fact)):
                docs.append({"kind": "fact", "text": f"{e.name}\n{statement(e, a)}"})
            for _ in range(_count(rng, restatements_per_fact)):
                docs.append({"kind": "fact", "text": f"{e.name}\n{restatement(e, a, rng)}"})
            if e.name in with_qa:
                for _ in range(_count(rng, qa_per_fact)):
                    docs.append({"kind": "qa", "text": format_answer_prompt(e.name, question_for(e, a, rng))
                                 + statement(e, a)})
    for e in fresh_entities(world, n_implications, rng):
        ctx, notes = passage_with_notes(e, rng)
        p = Passage(title=e.name, context=ctx, questions=())
        quality = rng.choices(IMPLICATION_QUALITIES, weights=quality_weights)[0]
        docs.append({"kind": "implications",
                     "text": format_self_edit_prompt(p, "implications") + implications(e, notes, quality, rng)})
    for e in fresh_entities(world, n_notes, rng):
        ctx, notes = passage_with_notes(e, rng)
        docs.append({"kind": "notes", "text": f"{e.name}\n{ctx}\n\n" + "\n".join(notes.values())})
    rng.shuffle(docs)
    return docs


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
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--show", type=int, default=0, help="print this many example documents of each kind")
    args = ap.parse_args(argv)
    world = build_world(args.seed)
    paths = write_seal_files(world, args.out)
    print(json.dumps({"entities": {"known": len(world.known),
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
