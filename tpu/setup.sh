#!/usr/bin/env bash
# Install the project on every worker: a Python venv, `pip install -e .` and jax[tpu].
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KIT_SUMMARY="Install the project on EVERY worker (--worker=all): code (via tpu/sync.sh), venv, pip install -e . + jax[tpu]."
KIT_DETAILS="On each worker, in --remote-dir: creates .venv with Python --python (python3.X -m venv when the image has it,
otherwise uv fetches a standalone Python: the TPU images ship Python 3.10 and JAX 0.10 needs >= 3.11), then
  .venv/bin/python -m pip install -e . '--jax-spec' -f --libtpu-url [--pip-extra]
in one resolver run, so jax[tpu] stays inside pyproject's jax pin and libtpu matches it. Idempotent: re-running
reuses the venv (--fresh rebuilds it). --check then starts JAX on all workers at once (jax.distributed.initialize()
auto-detects the slice) and prints each worker's devices. The workers download from PyPI, GitHub (uv) and
storage.googleapis.com: they need outbound internet (external IP or Cloud NAT)."
KIT_EXAMPLES="  $KIT_SCRIPT --name seal-jax --zone us-west4-a
  $KIT_SCRIPT --no-sync --jax-spec 'jax[tpu]==0.10.2' --pip-extra 'llama-models==0.3.0'"

kit_common_opts
kit_remote_opts
kit_opt --python TPU_PYTHON VERSION "3.11" "Python version of the venv (project needs >= 3.11)."
kit_opt --jax-spec TPU_JAX_SPEC SPEC "jax[tpu]" "pip requirement for JAX with TPU support (e.g. 'jax[tpu]==0.10.2')."
kit_opt --libtpu-url TPU_LIBTPU_URL URL "$KIT_LIBTPU_URL_DEFAULT" "pip -f (find-links) page with the libtpu wheels."
kit_opt --pip-extra TPU_PIP_EXTRA ARGS "" "More pip install arguments/packages, space-separated."
kit_opt --sync TPU_SETUP_SYNC - 1 "Run tpu/sync.sh first (the workers need the code for pip install -e .)."
kit_opt --fresh TPU_SETUP_FRESH - 0 "Delete and rebuild the venv."
kit_opt --check TPU_SETUP_CHECK - 1 "Afterwards, start JAX on every worker and print its devices."
kit_parse "$@"

[[ $TPU_PYTHON =~ ^3\.[0-9]+$ ]] || kit_die "--python '$TPU_PYTHON': expected a version like 3.11"
[[ $TPU_PYTHON =~ ^3\.(1[1-9]|[2-9][0-9])$ ]] || kit_die "--python $TPU_PYTHON: JAX 0.10 needs Python >= 3.11"

if [[ $TPU_SETUP_SYNC == 1 ]]; then
  # sync.sh reads the same settings from the environment.
  export TPU_NAME TPU_ZONE TPU_PROJECT TPU_DRY_RUN TPU_REMOTE_DIR TPU_SSH_ARGS
  "$KIT_DIR/sync.sh"
fi

REMOTE_DIR=$(kit_remote_dir_sh)
PY="python$TPU_PYTHON"
pip_args=(-e . "$TPU_JAX_SPEC" -f "$TPU_LIBTPU_URL")
if [[ -n $TPU_PIP_EXTRA ]]; then
  read -r -a extra <<<"$TPU_PIP_EXTRA"
  pip_args+=(${extra[@]+"${extra[@]}"})
fi

# shellcheck disable=SC2016  # expanded on the workers
steps=("set -e" "cd $REMOTE_DIR" 'export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"')
if [[ $TPU_SETUP_FRESH == 1 ]]; then steps+=("rm -rf .venv"); fi
# A venv from the image's python3.X when it has one (with ensurepip), else from uv (installed with pip --user, or
# with its installer where pip refuses, e.g. on PEP 668 images); uv downloads a standalone Python.
from_image="command -v $PY >/dev/null 2>&1 && $PY -m venv .venv 2>/dev/null"
get_uv="command -v uv >/dev/null 2>&1 || python3 -m pip install --user --quiet uv || curl -LsSf https://astral.sh/uv/install.sh | sh"
from_uv=$(kit_join "; " "rm -rf .venv" "$get_uv" "uv venv --seed --python $TPU_PYTHON .venv")
steps+=("if [ ! -x .venv/bin/python ]; then if $from_image; then echo \"venv from \$(command -v $PY)\"; else $from_uv; fi; fi"
  ".venv/bin/python -m pip install --quiet --upgrade pip"
  ".venv/bin/python -m pip install --quiet $(kit_quote "${pip_args[@]}")"
  "echo \"\$(hostname): \$(.venv/bin/python -c 'import jax; print(\"jax\", jax.__version__)')\"")
kit_ssh all "$(kit_join "; " "${steps[@]}")"

if [[ $TPU_SETUP_CHECK == 1 ]]; then
  check='import jax; jax.distributed.initialize(); print(f"worker {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local / {jax.device_count()} global devices, {jax.devices()[0].device_kind}")'
  kit_ssh all "cd $REMOTE_DIR && timeout 600 .venv/bin/python -c $(kit_quote "$check")"
fi

if ! kit_is_dry_run; then
  kit_info "next: tpu/launch.sh --name $TPU_NAME --zone $TPU_ZONE --module inner_loop_job -- <module flags>"
fi
