#!/usr/bin/env bash
# Copy results (a run directory) back from worker 0, or (--upload) put a run directory onto the workers.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KIT_SUMMARY="Copy a run directory back from worker 0 (only process 0 writes results) into --dest."
KIT_DETAILS="--run-dir is relative to --remote-dir on the worker and to --dest here: --run-dir runs/inner-64 copies
WORKER:~/seal-jax/runs/inner-64 to DEST/runs/inner-64 (existing files are overwritten, others kept).
--upload goes the other way, onto every worker by default: how a run saved here is put back on a fresh slice
(e.g. after a spot preemption) before relaunching the same command to resume it."
KIT_EXAMPLES="  $KIT_SCRIPT --run-dir runs/inner-64
  $KIT_SCRIPT --run-dir runs/inner-64 --upload     # after re-creating a preempted slice"

kit_common_opts
kit_remote_opts
kit_opt --run-dir TPU_RUN_DIR DIR "runs" "Run directory, relative to --remote-dir (e.g. runs/inner-64: the module's --out)."
kit_opt --dest TPU_FETCH_DEST DIR "$REPO_ROOT" "Local directory the run directory is placed under."
kit_opt --worker TPU_FETCH_WORKER WORKER "auto" "Worker index (or all, for --upload); auto: 0, or all with --upload."
kit_opt --upload TPU_FETCH_UPLOAD - 0 "Copy DEST/RUN_DIR to the workers instead."
kit_parse "$@"

RUN_DIR=${TPU_RUN_DIR%/}
[[ $RUN_DIR =~ ^[A-Za-z0-9_.-][A-Za-z0-9_./-]*$ && $RUN_DIR != *..* ]] ||
  kit_die "--run-dir '$TPU_RUN_DIR': a relative path (letters, digits, '_', '.', '-', '/'; no '..')"
WORKER=$TPU_FETCH_WORKER
if [[ $WORKER == auto ]]; then
  if [[ $TPU_FETCH_UPLOAD == 1 ]]; then WORKER=all; else WORKER=0; fi
fi
kit_check_worker --worker "$WORKER" "$TPU_FETCH_UPLOAD"

parent=$(dirname "$RUN_DIR") # "." for a top-level directory
local_parent=$TPU_FETCH_DEST
remote_parent=$TPU_REMOTE_DIR           # for scp (relative to the remote home)
remote_parent_sh=$(kit_remote_dir_sh) # for the remote shell
if [[ $parent != . ]]; then
  local_parent+="/$parent"
  remote_parent+="/$parent"
  remote_parent_sh+="/$parent"
fi
if [[ $TPU_FETCH_UPLOAD == 1 ]]; then
  local_src="$TPU_FETCH_DEST/$RUN_DIR"
  if ! kit_is_dry_run && [[ ! -d $local_src ]]; then kit_die "$local_src: no such directory"; fi
  kit_ssh "$WORKER" "mkdir -p $remote_parent_sh"
  kit_scp "$WORKER" "$local_src" "$TPU_NAME:$remote_parent/" --recurse
else
  kit_run mkdir -p "$local_parent"
  kit_scp "$WORKER" "$TPU_NAME:$TPU_REMOTE_DIR/$RUN_DIR" "$local_parent/" --recurse
  if ! kit_is_dry_run; then kit_info "fetched into $TPU_FETCH_DEST/$RUN_DIR"; fi
fi
