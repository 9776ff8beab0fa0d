"""Read the original SEAL prompts out of your own checkout of the original repository into a prompts file.

    python -m experiments.import_seal_prompts PATH_TO_SEAL_CHECKOUT --out prompts.json

Then `--prompts prompts.json` makes `knowledge_incorporation` (self-edit and grading prompts) and `arc_few_shot`
(self-edit system message and instruction, TTT/inference instruction) use the original's wording byte for byte.
Where each string lives in the checkout: `seal_jax.original_prompts`. Nothing from the checkout is run.
"""

from __future__ import annotations

import argparse
import sys

from seal_jax.original_prompts import import_from_checkout, save
from seal_jax.runs import ArgumentParser, cli

PROG = "experiments.import_seal_prompts"


@cli
def main(argv=None) -> int:
    ap = ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkout", help="the root of a checkout of the original SEAL repository")
    ap.add_argument("--out", required=True, help="the prompts file to write (JSON)")
    args = ap.parse_args(argv)
    prompts = import_from_checkout(args.checkout)
    save(prompts, args.out)
    variants = ", ".join(sorted(prompts["knowledge_self_edit"]))
    print(f"wrote {args.out}: knowledge self-edit prompts ({variants}), answer, grade, ARC self-edit "
          f"instruction and system message, ARC TTT instruction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
