"""ARC grid augmenters: the original SEAL's four self-edit families (spec section 1.3), inverses, colour/order
permutations, and a registry by name.

Every augmenter works on one grid or on a stack of same-shape grids (arrays ``[..., H, W]``), is applied identically
to every grid of a task (`Augmenter.apply_to_task`), and, where the map is injective, has an inverse
(`Augmenter.invert`, with ``invert(apply(g)) == g``). Randomness only comes from an explicit
``numpy.random.Generator`` (`make_rng(seed)`); nothing depends on Python's hash order.

Families, in the original's order (`augmenters_for`; names are registry keys, the original's class names in `label`):
    basic  (11) rotate_90, rotate_270, rotate_180 (``np.rot90`` k=1/3/2, counter-clockwise), flip_0 (up-down),
                flip_1 (left-right), reflect_0_reverse, reflect_1_reverse, reflect_0, reflect_1 (grid concatenated
                with its mirror along rows/columns; the mirror first when ``reverse``), translate_xy (random cyclic
                roll, not invertible), transpose
    size   (3)  increase_resolution_2 (every cell a 2x2 block), increase_height_2, increase_width_2
    chain  (6)  rotate_90 / rotate_270 / rotate_180 / flip_0 / flip_1 / transpose, each followed by
                increase_resolution_2; named ``"rotate_90+increase_resolution_2"`` etc.
    repeat (3)  repeat_0_2 (tiled twice vertically), repeat_1_2 (horizontally), repeat_2_2 (2x2)
    concat (2)  concat_rotate_180_0 / _1 (grid followed by its 180-degree rotation); in the original but never
                enabled by a self-edit (no flag), so not part of `SELF_EDIT_FAMILIES`.
`get_augmenter` also builds ad-hoc chains from ``"+"``-joined registered names.

RandomTranslateXY (``translate_xy``) keeps the original's quirk by default (spec section 1.3, W8): every pair
of a task gets its own copy of the caller's generator, the input grid takes the first two draws and the output
grid the next two (so input and output are shifted differently), and the caller's generator is not advanced (so
every task gets the same draws). ``translate_xy_shared`` is the fixed variant: one shift per task, drawn from the
caller's generator, applied to every grid.

Task-level permutations used when building TTT data: `permute_colors` (a random bijection of colours 1..9 with 0
fixed that sends the task's colours to colours unused by the task where possible; invert with
`invert_color_map`) and `permute_examples` (random order of the demonstrations).
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import types
from typing import Any, Mapping, Sequence

import numpy as np

from seal_jax.arc.data import ArcExample, ArcTask
from seal_jax.arc.grids import Grid, as_grid

__all__ = ["AUGMENTERS", "FAMILIES", "MAX_GRID_SIZE", "SELF_EDIT_FAMILIES", "AugmentError", "Augmenter", "Chain",
           "Concat", "Flip", "IncreaseHeight", "IncreaseResolution", "IncreaseWidth", "RandomTranslateXY", "Reflect",
           "Repeat", "Rotate", "Transpose", "apply_color_map", "augmenters_for", "fits", "get_augmenter",
           "invert_color_map", "make_rng", "permute_colors", "permute_examples"]

MAX_GRID_SIZE = 30  # ARC's largest side; the original drops augmented tasks with any grid beyond it


class AugmentError(ValueError):
    """An augmenter that cannot be built, applied or inverted as asked (bad parameters, a grid outside the
    augmenter's image, a missing generator, an unknown name)."""


def make_rng(seed: int | np.random.Generator) -> np.random.Generator:
    """A numpy Generator from an explicit integer seed (a Generator is passed through)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise AugmentError(f"seed must be an int or a numpy Generator, got {type(seed).__name__}")
    return np.random.default_rng(int(seed))


def _stack(grids: Any) -> np.ndarray:
    a = np.asarray(grids)
    if a.ndim < 2 or a.shape[-1] == 0 or a.shape[-2] == 0:
        raise AugmentError(f"expected a grid or a stack of grids [..., H, W], got shape {a.shape}")
    return a


class Augmenter(abc.ABC):
    """A grid transform. Subclasses implement `_forward` (and `_backward` when invertible) on arrays [..., H, W]."""

    random: bool = False  # needs a generator
    invertible: bool = True  # `invert` is defined
    bijective: bool = False  # every grid of the output shape is an image (no consistency check needed)

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Registry key."""

    @property
    @abc.abstractmethod
    def label(self) -> str:
        """The original's ``str()`` of the same augmenter (e.g. ``Rotate(90)``), for matching its logs."""

    @abc.abstractmethod
    def _forward(self, a: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """The transform on [..., H, W]."""

    def _backward(self, a: np.ndarray) -> np.ndarray:
        raise AugmentError(f"{self.name} is not invertible")

    def apply(self, grids: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        """Transform one grid [H, W] or a stack [..., H, W] (all grids of a stack get the same transform)."""
        if self.random and rng is None:
            raise AugmentError(f"{self.name} is random: pass rng=make_rng(seed)")
        return self._forward(_stack(grids), rng)

    def invert(self, grids: Any, strict: bool = True) -> np.ndarray:
        """The inverse transform: ``invert(apply(g)) == g``. Raises `AugmentError` when the shape cannot come from
        this augmenter, and with ``strict`` also when the values cannot (e.g. the halves of a reflection differ);
        with ``strict=False`` such a grid is mapped by the same slicing anyway."""
        if not self.invertible:
            raise AugmentError(f"{self.name} is not invertible")
        a = _stack(grids)
        out = self._backward(a)
        if out.shape[-2] == 0 or out.shape[-1] == 0:
            raise AugmentError(f"a grid of shape {a.shape[-2:]} is not an output of {self.name}")
        if self.bijective:
            return out
        again = self._forward(out, None)
        if again.shape != a.shape:
            raise AugmentError(f"a grid of shape {a.shape[-2:]} is not an output of {self.name}")
        if strict and not np.array_equal(again, a):
            raise AugmentError(f"grid is not an output of {self.name} (strict inverse)")
        return out

    def apply_to_grid(self, grid: Grid, rng: np.random.Generator | None = None) -> Grid:
        """`apply` for one `Grid`, returning a `Grid`."""
        return as_grid(self.apply(np.asarray(grid, dtype=np.int64), rng))

    def invert_grid(self, grid: Grid, strict: bool = True) -> Grid:
        """`invert` for one `Grid`, returning a `Grid`."""
        return as_grid(self.invert(np.asarray(grid, dtype=np.int64), strict))

    def apply_to_task(self, task: ArcTask, rng: np.random.Generator | None = None) -> ArcTask:
        """Apply to every grid of the task (demonstrations and tests, inputs and known outputs)."""
        if self.random and rng is None:
            raise AugmentError(f"{self.name} is random: pass rng=make_rng(seed)")

        def ex(e: ArcExample) -> ArcExample:
            return ArcExample(self.apply_to_grid(e.input, rng),
                              None if e.output is None else self.apply_to_grid(e.output, rng))
        return dataclasses.replace(task, train=tuple(map(ex, task.train)), test=tuple(map(ex, task.test)))

    def __str__(self) -> str:
        return self.name


def _axis(axis: int) -> int:
    """Grid axis 0 (rows) / 1 (columns) -> the stack axis -2 / -1."""
    return -2 if axis == 0 else -1


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise AugmentError(msg)


@dataclasses.dataclass(frozen=True)
class Rotate(Augmenter):
    """Counter-clockwise rotation by `angle` degrees (``np.rot90``)."""

    angle: int
    bijective = True

    def __post_init__(self):
        _check(self.angle in (90, 180, 270), f"Rotate angle must be 90, 180 or 270, got {self.angle!r}")

    name = property(lambda self: f"rotate_{self.angle}")
    label = property(lambda self: f"Rotate({self.angle})")

    def _forward(self, a, rng):
        return np.rot90(a, self.angle // 90, axes=(-2, -1))

    def _backward(self, a):
        return np.rot90(a, 4 - self.angle // 90, axes=(-2, -1))


@dataclasses.dataclass(frozen=True)
class Flip(Augmenter):
    """Mirror: axis 0 reverses the row order (up-down), axis 1 the column order (left-right). Self-inverse."""

    axis: int
    bijective = True

    def __post_init__(self):
        _check(self.axis in (0, 1), f"Flip axis must be 0 or 1, got {self.axis!r}")

    name = property(lambda self: f"flip_{self.axis}")
    label = property(lambda self: f"Flip({self.axis})")

    def _forward(self, a, rng):
        return np.flip(a, _axis(self.axis))

    def _backward(self, a):
        return self._forward(a, None)


@dataclasses.dataclass(frozen=True)
class Transpose(Augmenter):
    """Swap rows and columns. Self-inverse."""

    bijective = True
    name = property(lambda self: "transpose")
    label = property(lambda self: "Transpose()")

    def _forward(self, a, rng):
        return np.swapaxes(a, -1, -2)

    def _backward(self, a):
        return self._forward(a, None)


@dataclasses.dataclass(frozen=True)
class Reflect(Augmenter):
    """The grid concatenated with its mirror along `axis` (0: stacked vertically, 1: side by side); the mirror comes
    first when `reverse`. Doubles that side; the inverse keeps the unmirrored half."""

    axis: int
    reverse: bool = False

    def __post_init__(self):
        _check(self.axis in (0, 1), f"Reflect axis must be 0 or 1, got {self.axis!r}")

    name = property(lambda self: f"reflect_{self.axis}" + ("_reverse" if self.reverse else ""))
    label = property(lambda self: f"Reflect({self.axis}, reverse={self.reverse})")

    def _forward(self, a, rng):
        ax = _axis(self.axis)
        m = np.flip(a, ax)
        return np.concatenate((m, a) if self.reverse else (a, m), axis=ax)

    def _backward(self, a):
        ax = _axis(self.axis)
        n = a.shape[ax]
        half = slice(n - n // 2, n) if self.reverse else slice(0, n // 2)
        return a[..., half, :] if ax == -2 else a[..., half]


@dataclasses.dataclass(frozen=True)
class IncreaseResolution(Augmenter):
    """Every cell becomes a `factor` x `factor` block."""

    factor: int

    def __post_init__(self):
        _check(isinstance(self.factor, int) and self.factor >= 2, f"factor must be an int >= 2, got {self.factor!r}")

    name = property(lambda self: f"increase_resolution_{self.factor}")
    label = property(lambda self: f"IncreaseResolution({self.factor})")

    def _forward(self, a, rng):
        return np.repeat(np.repeat(a, self.factor, axis=-2), self.factor, axis=-1)

    def _backward(self, a):
        return a[..., ::self.factor, ::self.factor]


@dataclasses.dataclass(frozen=True)
class IncreaseHeight(Augmenter):
    """Every row repeated `factor` times."""

    factor: int

    def __post_init__(self):
        _check(isinstance(self.factor, int) and self.factor >= 2, f"factor must be an int >= 2, got {self.factor!r}")

    name = property(lambda self: f"increase_height_{self.factor}")
    label = property(lambda self: f"IncreaseHeight({self.factor})")

    def _forward(self, a, rng):
        return np.repeat(a, self.factor, axis=-2)

    def _backward(self, a):
        return a[..., ::self.factor, :]


@dataclasses.dataclass(frozen=True)
class IncreaseWidth(Augmenter):
    """Every column repeated `factor` times."""

    factor: int

    def __post_init__(self):
        _check(isinstance(self.factor, int) and self.factor >= 2, f"factor must be an int >= 2, got {self.factor!r}")

    name = property(lambda self: f"increase_width_{self.factor}")
    label = property(lambda self: f"IncreaseWidth({self.factor})")

    def _forward(self, a, rng):
        return np.repeat(a, self.factor, axis=-1)

    def _backward(self, a):
        return a[..., ::self.factor]


@dataclasses.dataclass(frozen=True)
class Repeat(Augmenter):
    """The whole grid tiled `n` times: axis 0 vertically, 1 horizontally, 2 both (n x n tiles)."""

    axis: int
    n: int

    def __post_init__(self):
        _check(self.axis in (0, 1, 2), f"Repeat axis must be 0, 1 or 2, got {self.axis!r}")
        _check(isinstance(self.n, int) and self.n >= 2, f"Repeat n must be an int >= 2, got {self.n!r}")

    name = property(lambda self: f"repeat_{self.axis}_{self.n}")
    label = property(lambda self: f"Repeat({self.axis}, {self.n})")

    def _forward(self, a, rng):
        reps = [1] * a.ndim
        if self.axis in (0, 2):
            reps[-2] = self.n
        if self.axis in (1, 2):
            reps[-1] = self.n
        return np.tile(a, reps)

    def _backward(self, a):
        h = a.shape[-2] // self.n if self.axis in (0, 2) else a.shape[-2]
        w = a.shape[-1] // self.n if self.axis in (1, 2) else a.shape[-1]
        return a[..., :h, :w]


@dataclasses.dataclass(frozen=True)
class Concat(Augmenter):
    """The grid followed by `second` applied to it, along `axis` (the original's ``Concat((Identity, second))``);
    `second` must keep the shape. The inverse keeps the first part."""

    second: Augmenter
    axis: int

    def __post_init__(self):
        _check(self.axis in (0, 1), f"Concat axis must be 0 or 1, got {self.axis!r}")
        _check(not self.second.random, "Concat needs a deterministic second augmenter")

    name = property(lambda self: f"concat_{self.second.name}_{self.axis}")
    label = property(lambda self: f"Concat((IdentityAugmenter(), {self.second.label}), axis={self.axis})")

    def _forward(self, a, rng):
        b = self.second._forward(a, None)
        _check(b.shape == a.shape, f"{self.name}: {self.second.name} changed the grid shape")
        return np.concatenate((a, b), axis=_axis(self.axis))

    def _backward(self, a):
        n = a.shape[_axis(self.axis)] // 2
        return a[..., :n, :] if self.axis == 0 else a[..., :n]


@dataclasses.dataclass(frozen=True)
class Chain(Augmenter):
    """Several augmenters applied in order; invertible when all parts are (inverted in reverse order)."""

    parts: tuple[Augmenter, ...]

    def __post_init__(self):
        _check(isinstance(self.parts, tuple) and len(self.parts) >= 1 and
               all(isinstance(p, Augmenter) for p in self.parts), "Chain needs a non-empty tuple of augmenters")

    name = property(lambda self: "+".join(p.name for p in self.parts))
    label = property(lambda self: "Chain([" + ", ".join(p.label for p in self.parts) + "])")
    random = property(lambda self: any(p.random for p in self.parts))
    invertible = property(lambda self: all(p.invertible for p in self.parts))
    bijective = property(lambda self: all(p.bijective for p in self.parts))

    def _forward(self, a, rng):
        for p in self.parts:
            a = p._forward(a, rng)
        return a

    def _backward(self, a):
        for p in reversed(self.parts):
            a = p._backward(a)
        return a

    def apply_to_task(self, task: ArcTask, rng: np.random.Generator | None = None) -> ArcTask:
        """Part by part, so a random part keeps its own task-level semantics."""
        for p in self.parts:
            task = p.apply_to_task(task, rng)
        return task


@dataclasses.dataclass(frozen=True)
class RandomTranslateXY(Augmenter):
    """Cyclic roll (``np.roll``) by (dx, dy), dx in [0, min(4, H)), dy in [0, min(4, W)). Not invertible.

    ``shared=False`` (the original's quirk): in `apply_to_task` each pair uses its own copy of `rng`; the input
    takes the first two draws, the output the next two; `rng` is not advanced. ``shared=True``: one (dx, dy) in
    [0, 4)^2 per task drawn from `rng`, each grid rolled by (dx mod H, dy mod W)."""

    shared: bool = False
    random = True
    invertible = False

    name = property(lambda self: "translate_xy_shared" if self.shared else "translate_xy")
    label = property(lambda self: "RandomTranslateXY()")

    def _forward(self, a, rng):
        dx = int(rng.integers(0, min(4, a.shape[-2])))
        dy = int(rng.integers(0, min(4, a.shape[-1])))
        return np.roll(a, (dx, dy), axis=(-2, -1))

    def apply_to_task(self, task: ArcTask, rng: np.random.Generator | None = None) -> ArcTask:
        if rng is None:
            raise AugmentError(f"{self.name} is random: pass rng=make_rng(seed)")
        if self.shared:
            dx, dy = (int(v) for v in rng.integers(0, 4, size=2))

            def roll(g: Grid) -> Grid:
                return as_grid(np.roll(np.asarray(g, dtype=np.int64), (dx % len(g), dy % len(g[0])), axis=(0, 1)))

            def ex(e: ArcExample) -> ArcExample:
                return ArcExample(roll(e.input), None if e.output is None else roll(e.output))
        else:
            def ex(e: ArcExample) -> ArcExample:
                own = copy.deepcopy(rng)
                inp = self.apply_to_grid(e.input, own)
                return ArcExample(inp, None if e.output is None else self.apply_to_grid(e.output, own))
        return dataclasses.replace(task, train=tuple(map(ex, task.train)), test=tuple(map(ex, task.test)))


_BASIC = (Rotate(90), Rotate(270), Rotate(180), Flip(0), Flip(1), Reflect(0, reverse=True), Reflect(1, reverse=True),
          Reflect(0, reverse=False), Reflect(1, reverse=False), RandomTranslateXY(), Transpose())
_SIZE = (IncreaseResolution(2), IncreaseHeight(2), IncreaseWidth(2))
_CONCAT = (Concat(Rotate(180), 0), Concat(Rotate(180), 1))
_CHAIN = tuple(Chain((a, IncreaseResolution(2))) for a in (Rotate(90), Rotate(270), Rotate(180), Flip(0), Flip(1),
                                                            Transpose()))
_REPEAT = (Repeat(0, 2), Repeat(1, 2), Repeat(2, 2))

FAMILIES: Mapping[str, tuple[Augmenter, ...]] = types.MappingProxyType(
    {"basic": _BASIC, "size": _SIZE, "chain": _CHAIN, "repeat": _REPEAT, "concat": _CONCAT})
SELF_EDIT_FAMILIES = ("basic", "size", "chain", "repeat")  # the families a self-edit switches (use_<family>_...)
_FAMILY_ORDER = ("basic", "size", "concat", "chain", "repeat")  # the original's concatenation order

AUGMENTERS: Mapping[str, Augmenter] = types.MappingProxyType(
    {a.name: a for fam in _FAMILY_ORDER for a in FAMILIES[fam]} | {"translate_xy_shared": RandomTranslateXY(True)})


def get_augmenter(name: str) -> Augmenter:
    """A registered augmenter by name, or a `Chain` of registered names joined by ``"+"``."""
    if not isinstance(name, str):
        raise AugmentError(f"augmenter name must be a str, got {type(name).__name__}")
    if name in AUGMENTERS:
        return AUGMENTERS[name]
    parts = name.split("+")
    if len(parts) > 1 and all(p in AUGMENTERS for p in parts):
        return Chain(tuple(AUGMENTERS[p] for p in parts))
    unknown = next((p for p in parts if p not in AUGMENTERS), name)
    raise AugmentError(f"unknown augmenter {unknown!r}; known: {', '.join(AUGMENTERS)}")


def augmenters_for(basic: bool = False, size: bool = False, chain: bool = False, repeat: bool = False,
                   concat: bool = False) -> tuple[Augmenter, ...]:
    """The augmenters of the enabled families, in the original's order (basic, size, concat, chain, repeat):
    at most 23 with the four self-edit families."""
    on = {"basic": basic, "size": size, "chain": chain, "repeat": repeat, "concat": concat}
    return tuple(a for fam in _FAMILY_ORDER if on[fam] for a in FAMILIES[fam])


def fits(task: ArcTask, max_size: int = MAX_GRID_SIZE) -> bool:
    """Whether every grid of the task is at most `max_size` in height and width (the original's size filter)."""
    h, w = task.max_size()
    return h <= max_size and w <= max_size


def _task_colors(task: ArcTask) -> np.ndarray:
    return np.unique(np.concatenate([np.asarray(g, dtype=np.int64).ravel() for g in task.grids()]))


def permute_colors(task: ArcTask, rng: np.random.Generator) -> tuple[ArcTask, np.ndarray]:
    """Recolour the task with a random bijection of the colours (0 always fixed), the same map for every grid
    (test outputs included). The task's non-zero colours go to colours the task does not use while such remain,
    then to its own colours in random order; the rest of 1..9 is filled randomly.

    Returns (recoloured task, lut) with ``lut[c]`` the new colour of ``c``; `invert_color_map(lut)` undoes it."""
    used = _task_colors(task)
    used = used[used != 0]
    unused = np.setdiff1d(np.arange(1, 10), used)
    targets = np.concatenate([rng.permutation(unused), rng.permutation(used)])[:len(used)]
    rest = np.setdiff1d(np.arange(1, 10), targets)
    lut = np.arange(10)
    lut[used] = targets
    lut[unused] = rng.permutation(rest)

    def ex(e: ArcExample) -> ArcExample:
        return ArcExample(apply_color_map(e.input, lut), None if e.output is None else apply_color_map(e.output, lut))
    return dataclasses.replace(task, train=tuple(map(ex, task.train)), test=tuple(map(ex, task.test))), lut


def apply_color_map(grid: Grid, lut: np.ndarray) -> Grid:
    """Recolour a grid with a lookup table of 10 colours."""
    return as_grid(np.asarray(lut)[np.asarray(grid, dtype=np.int64)])


def invert_color_map(lut: Sequence[int] | np.ndarray) -> np.ndarray:
    """The inverse lookup table of a colour bijection."""
    lut = np.asarray(lut)
    if lut.shape != (10,) or not np.array_equal(np.sort(lut), np.arange(10)):
        raise AugmentError("colour map is not a permutation of 0..9")
    return np.argsort(lut)


def permute_examples(task: ArcTask, rng: np.random.Generator) -> ArcTask:
    """The task with its demonstrations in a random order."""
    order = rng.permutation(len(task.train))
    return dataclasses.replace(task, train=tuple(task.train[i] for i in order))
