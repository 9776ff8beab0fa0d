#!/usr/bin/env bash
# Run a shell command on the workers (or open a shell on one).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KIT_SUMMARY="Run a shell command on the workers, in --remote-dir when it exists; without a command, open a shell."
KIT_DETAILS="The words after -- are joined with spaces into one remote shell command line (quote it as one word to keep
pipes and ; for the remote side). Without a command: an interactive shell on --worker (0 when it is all)."
KIT_POSITIONAL="[-- COMMAND...]"
KIT_EXAMPLES="  $KIT_SCRIPT -- 'ps aux | grep [e]xperiments'
  $KIT_SCRIPT --worker 1 -- tail -n 50 logs/latest.worker1.log
  $KIT_SCRIPT --worker 0"

kit_common_opts
kit_remote_opts
kit_opt --worker TPU_SSH_WORKER WORKER "all" "Worker index, or all."
kit_parse "$@"

kit_check_worker --worker "$TPU_SSH_WORKER" 1
REMOTE_DIR=$(kit_remote_dir_sh)
if ((${#KIT_ARGS[@]} > 0)); then
  kit_ssh "$TPU_SSH_WORKER" "cd $REMOTE_DIR 2>/dev/null; ${KIT_ARGS[*]}"
else
  worker=$TPU_SSH_WORKER
  if [[ $worker == all ]]; then worker=0; fi
  kit_loc_flags
  extra=()
  if [[ -n $TPU_SSH_ARGS ]]; then read -r -a extra <<<"$TPU_SSH_ARGS"; fi
  kit_run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${KIT_LOC[@]}" "--worker=$worker" ${extra[@]+"${extra[@]}"}
fi
