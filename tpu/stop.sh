#!/usr/bin/env bash
# Stop the job started by tpu/launch.sh on every worker.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KIT_SUMMARY="Stop the job tpu/launch.sh started (its whole process group) on every worker, via logs/job.workerN.pid."
KIT_DETAILS="Sends --signal to the job's process group, waits up to --grace seconds, then SIGKILLs what is left and removes
the pid file, so that a new launch can take the TPU. Stop all workers together: a multi-host job whose peers are
gone just hangs in its next collective."
KIT_EXAMPLES="  $KIT_SCRIPT --name seal-jax --zone us-west4-a
  $KIT_SCRIPT --signal INT --grace 120"

kit_common_opts
kit_remote_opts
kit_opt --worker TPU_STOP_WORKER WORKER "all" "Worker index, or all."
kit_opt --signal TPU_STOP_SIGNAL SIGNAL "TERM" "Signal sent first (TERM, INT, ...)."
kit_opt --grace TPU_STOP_GRACE SECONDS 30 "Seconds to wait before SIGKILL."
kit_parse "$@"

kit_check_worker --worker "$TPU_STOP_WORKER" 1
[[ $TPU_STOP_SIGNAL =~ ^[A-Z0-9]+$ ]] || kit_die "--signal '$TPU_STOP_SIGNAL': use a name like TERM or INT"
[[ $TPU_STOP_GRACE =~ ^[0-9]+$ ]] || kit_die "--grace '$TPU_STOP_GRACE' is not a number of seconds"

REMOTE_DIR=$(kit_remote_dir_sh)
# shellcheck disable=SC2016  # expanded on the workers
steps=("cd $REMOTE_DIR 2>/dev/null || exit 0" "$KIT_REMOTE_WORKER_ID" 'PIDF=logs/job.worker$W.pid'
  'if [ ! -f "$PIDF" ]; then echo "worker $W: no job"; exit 0; fi'
  'P=$(cat "$PIDF")'
  'if ! kill -0 "$P" 2>/dev/null; then echo "worker $W: job $P had already exited"; rm -f "$PIDF"; exit 0; fi'
  "kill -$TPU_STOP_SIGNAL -- \"-\$P\" 2>/dev/null || kill -$TPU_STOP_SIGNAL \"\$P\""
  "i=0; while kill -0 \"\$P\" 2>/dev/null && [ \$i -lt $TPU_STOP_GRACE ]; do sleep 1; i=\$((i+1)); done"
  'if kill -0 "$P" 2>/dev/null; then kill -KILL -- "-$P" 2>/dev/null || kill -KILL "$P"; echo "worker $W: killed $P"; else echo "worker $W: job $P stopped"; fi'
  'rm -f "$PIDF"')
kit_ssh "$TPU_STOP_WORKER" "$(kit_join "; " "${steps[@]}")"
