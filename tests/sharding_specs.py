"""Run under 8 simulated CPU devices (see test_sharding.py, test_hf.py): the exact shardings on a real (2, 4) mesh.

  python -m tests.sharding_specs rules         the rules on a few tensors, with the drop log lines
  python -m tests.sharding_specs load CKPT     a HF checkpoint loaded onto the mesh: every leaf's spec and shard shape

Prints one JSON line.
"""

import json
import logging
import sys

import jax
import numpy as np

import seal_jax
from seal_jax.sharding import logical_to_spec, make_mesh, param_shardings

CASES = {  # name -> (logical axes, shape)
    "kv_heads_divide": (("embed", "kv_heads"), (64, 4)),
    "kv_heads_do_not_divide": (("embed", "kv_heads"), (64, 2)),
    "model_axis_used_twice": (("q_heads", "mlp"), (8, 128)),
    "rows_divide": (("batch", "length"), (4, 10)),
    "rows_do_not_divide": (("batch", "length"), (3, 10)),
}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _leaves(params):
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def rules(mesh):
    handler = _Records()
    logging.getLogger("seal_jax.sharding").addHandler(handler)
    out = {}
    for name, (axes, shape) in CASES.items():
        before = len(handler.lines)
        out[name] = {"spec": list(logical_to_spec(axes, shape, mesh)), "log": handler.lines[before:]}
    cfg = seal_jax.get_preset("tiny-qwen2")
    out["params"] = {k: list(s.spec) for k, s in _leaves(param_shardings(cfg, mesh)).items()}
    return out


def load(mesh, path):
    model = seal_jax.load_pretrained(path, sharding=mesh)
    ref = _leaves(seal_jax.load_pretrained(path).params)
    out = {}
    for key, leaf in _leaves(model.params).items():
        out[key] = {"spec": list(leaf.sharding.spec), "shard": list(leaf.addressable_shards[0].data.shape),
                    "devices": len(leaf.sharding.device_set),
                    "equal": bool(np.array_equal(np.asarray(leaf), np.asarray(ref[key])))}
    return out


def main(argv):
    assert jax.device_count() == 8, jax.devices()
    mesh = make_mesh(2, 4)
    result = rules(mesh) if argv[0] == "rules" else load(mesh, argv[1])
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
