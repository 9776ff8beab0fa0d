"""The synthetic world behind `make demo`: seeded, leak-free splits, canonical statements, implications of each
quality, and the pretraining corpus."""

import json
import random

import pytest

from seal_jax import demo_world as dw
from seal_jax.knowledge.data import Passage, load_passages
from seal_jax.knowledge.prompts import format_self_edit_prompt


@pytest.fixture(scope="module")
def world():
    return dw.build_world(0)


def test_same_seed_same_world_other_seed_other_world(world):
    again = dw.build_world(0)
    assert again.known == world.known and again.new_eval == world.new_eval and again.new_train == world.new_train
    assert dw.build_world(1).new_eval != world.new_eval


def test_splits_are_disjoint_and_sized(world):
    names = [e.name for e in world.known + world.new_train + world.new_eval]
    assert len(names) == len(set(names)) == 240 + 64 + 64
    assert world.names == frozenset(names)
    kinds = {e.kind for e in world.known}
    assert kinds == {"person", "company"}
    for e in world.known[:20]:
        assert e.attributes == dw.ATTRIBUTES[e.kind]


def test_new_splits_do_not_depend_on_the_pretraining_world_size(world):
    small = dw.build_world(0, n_known=10)
    assert small.new_eval == world.new_eval and small.new_train == world.new_train


def test_fresh_entities_never_reuse_a_world_name_and_are_seeded(world):
    a = dw.fresh_entities(world, 200, random.Random(5))
    b = dw.fresh_entities(world, 200, random.Random(5))
    assert a == b
    assert not {e.name for e in a} & world.names
    assert len({e.name for e in a}) == 200


def test_extra_eval_entities_are_seeded_new_and_a_prefix_of_a_longer_draw(world):
    a = dw.extra_eval_entities(world, 64)
    assert a == dw.extra_eval_entities(dw.build_world(0), 64)
    assert dw.extra_eval_entities(world, 80)[:64] == a  # asking for more keeps the first ones
    assert not {e.name for e in a} & world.names and len({e.name for e in a}) == 64


def test_canonical_statement_names_the_entity_and_ends_with_the_value(world):
    for e in world.new_eval[:30]:
        for attr, value in e.facts:
            s = dw.statement(e, attr)
            assert s.startswith(e.name + " ") and s.endswith(f" {value}.")
            assert s == f"{dw.statement_stem(e, attr)} {value}."


def test_canonical_statements_are_also_passage_phrasings(world):
    """Passages sometimes state a fact canonically (with a pronoun or the name as subject), so passage-only TTT is
    not handicapped by a phrasing it can never see."""
    rng = random.Random(0)
    e = next(x for x in world.known if x.kind == "person")
    seen = set()
    for _ in range(400):
        text = dw.passage_text(e, rng)
        seen |= {a for a in e.attributes if dw.statement(e, a)[len(e.name) + 1:-1] in text}
    assert seen == set(e.attributes)


def test_notes_restate_the_passages_own_wording_with_the_full_name(world):
    for p, notes in dw.passages_with_notes(world.new_eval[:40], 0, "new_eval"):
        e = next(x for x in world.new_eval if x.name == p.title)
        assert list(notes) != [] and set(notes) == set(e.attributes)
        for attr, note in notes.items():
            value = e.fact(attr)
            assert note.startswith(e.name) and note.endswith(".") and value in note
            # the note's wording after the subject is in the passage (a copy, not a recall)
            body = note[len(e.name):].rstrip(".")
            body = body[3:] if body.startswith("'s ") else body[2:] if body.startswith("' ") else body[1:]
            assert body in p.context, (note, p.context)


def test_passages_with_notes_gives_the_same_passages_as_to_passages(world):
    a = dw.to_passages(world.new_train[:10], 0, "new_train")
    b = [p for p, _ in dw.passages_with_notes(world.new_train[:10], 0, "new_train")]
    assert a == b


@pytest.mark.parametrize("quality", dw.IMPLICATION_QUALITIES)
def test_implications_restate_exactly_quality_facts_in_passage_order(world, quality):
    e = world.new_train[3]
    _, notes = dw.passage_with_notes(e, random.Random(7))
    lines = dw.implications(e, notes, quality, random.Random(quality)).splitlines()
    assert len(lines) == 5 and all(e.name in line for line in lines)
    facts = [line for line in lines if not dw.is_filler(e, line)]
    assert len(facts) == quality and all(line in notes.values() for line in facts)
    order = list(notes.values())
    assert [order.index(line) for line in facts] == sorted(order.index(line) for line in facts)


def test_implications_reject_a_bad_quality(world):
    e = world.new_train[0]
    _, notes = dw.passage_with_notes(e, random.Random(0))
    with pytest.raises(ValueError, match="quality must be 0..5"):
        dw.implications(e, notes, 6, random.Random(0))


def test_pretraining_corpus_is_seeded_per_epoch_and_never_states_a_new_fact(world):
    docs0 = dw.pretraining_documents(world, epoch=0)
    assert docs0 == dw.pretraining_documents(world, epoch=0)
    docs1 = dw.pretraining_documents(world, epoch=1)
    assert docs0 != docs1
    kinds = {d["kind"] for d in docs0}
    assert kinds == {"passage", "fact", "qa", "implications"}
    assert sum(d["kind"] == "implications" for d in docs0) == 150
    new_statements = {dw.statement(e, a) for e in world.new_train + world.new_eval for a in e.attributes}
    new_titles = {e.name + "\n" for e in world.new_train + world.new_eval}
    for d in docs0 + docs1:
        assert not any(s in d["text"] for s in new_statements if len(s) > 0), d["text"]
        assert not any(d["text"].startswith(t) for t in new_titles)


def test_qa_documents_answer_with_the_canonical_statement(world):
    qa = [d["text"] for d in dw.pretraining_documents(world, epoch=0) if d["kind"] == "qa"]
    with_qa = {e.name: e for e in dw.qa_entities(world)}
    for text in qa[:50]:
        title = text.split("Topic: ", 1)[1].split("\n", 1)[0]
        answer = text.rsplit("Answer:\n", 1)[1]
        e = with_qa[title]
        assert answer in {dw.statement(e, a) for a in e.attributes}


def test_implication_documents_use_the_self_edit_prompt(world):
    docs = [d["text"] for d in dw.pretraining_documents(world, epoch=2) if d["kind"] == "implications"]
    for text in docs[:20]:
        block, completion = text.split("Passage:\n", 1)[1].split("\n\nImplications:\n", 1)
        title, context = block.split("\n", 1)
        prompt = format_self_edit_prompt(Passage(title=title, context=context, questions=()), "implications")
        assert text == prompt + completion
        assert len(completion.splitlines()) == 5
        assert all(line.startswith(title) or title in line for line in completion.splitlines())


def test_quality_weights_must_cover_every_quality(world):
    with pytest.raises(ValueError, match="quality_weights needs 6"):
        dw.pretraining_documents(world, quality_weights=(1, 1, 1))


def test_seal_files_round_trip_through_the_knowledge_loader(world, tmp_path):
    paths = dw.write_seal_files(world, str(tmp_path))
    ev = load_passages(paths["eval"])
    assert len(ev) == 64 and [p.title for p in ev] == [e.name for e in world.new_eval]
    for p, e in zip(ev, world.new_eval):
        assert [q.answer for q in p.questions] == [v for _, v in e.facts]
        assert all(e.name.rstrip("s") in q.question for q in p.questions)
    assert json.load(open(paths["train"]))  # plain JSON


def test_genitive_of_a_name_ending_in_s(world):
    e = dw.Entity("company", "Zebyn Brothers", (("city", "X"), ("year", "1900"), ("product", "ink"),
                                                ("founder", "A B"), ("colour", "red")), "it")
    assert all("Brothers's" not in dw.question_for(e, a, random.Random(i)) for a in e.attributes for i in range(8))
    assert all("Brothers's" not in dw.restatement(e, a, random.Random(i)) for a in e.attributes for i in range(8))


def test_offline_grader_accepts_canonical_answers_and_rejects_wrong_values(world):
    from seal_jax.knowledge.grader import OfflineGrader
    grader = OfflineGrader()
    rng = random.Random(0)
    qs, golds, right, wrong = [], [], [], []
    ents = world.new_eval[:40]
    for i, e in enumerate(ents):
        other = ents[(i + 1) % len(ents)]
        for attr, value in e.facts:
            if other.kind != e.kind or other.fact(attr) == value:
                continue
            qs.append(f"Topic: {e.name}\n{dw.question_for(e, attr, rng)}")
            golds.append(value)
            right.append(dw.statement(e, attr))
            wrong.append(dw.statement(e, attr)[:-len(value) - 1] + other.fact(attr) + ".")
    assert len(qs) > 100
    assert sum(grader.grade(qs, golds, right)) == len(qs)
    assert sum(grader.grade(qs, golds, wrong)) <= 0.05 * len(qs)
