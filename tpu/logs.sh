#!/usr/bin/env bash
# Stream the log of the job started by tpu/launch.sh.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KIT_SUMMARY="Stream a job's log: tail -F of worker 0's log by default, --worker N for another, --worker all for every one."
KIT_DETAILS="Reads --remote-dir/logs/latest.workerN.log (the last launch) or, with --run-name, logs/RUN_NAME.workerN.log.
With --worker all each line is prefixed with [worker N]. Ctrl-C stops the streaming, not the job."
KIT_EXAMPLES="  $KIT_SCRIPT --name seal-jax --zone us-west4-a
  $KIT_SCRIPT --worker all --lines 20
  $KIT_SCRIPT --run-name inner_loop_job-20250101-120000 --no-follow"

kit_common_opts
kit_remote_opts
kit_opt --worker TPU_LOG_WORKER WORKER 0 "Worker index, or all."
kit_opt --run-name TPU_RUN_NAME NAME "" "Run name given by tpu/launch.sh (empty: the latest launch)."
kit_opt --lines TPU_LOG_LINES N 100 "Show the last N lines first."
kit_opt --follow TPU_LOG_FOLLOW - 1 "Keep streaming new lines (tail -F)."
kit_parse "$@"

kit_check_worker --worker "$TPU_LOG_WORKER" 1
[[ $TPU_LOG_LINES =~ ^[0-9]+$ ]] || kit_die "--lines '$TPU_LOG_LINES' is not a number"
stem=${TPU_RUN_NAME:-latest}
[[ $stem =~ ^[A-Za-z0-9_.-]+$ ]] || kit_die "--run-name '$stem': use letters, digits, '_', '.', '-'"

tail_cmd="tail -n $TPU_LOG_LINES"
if [[ $TPU_LOG_FOLLOW == 1 ]]; then tail_cmd+=" -F"; fi
REMOTE_DIR=$(kit_remote_dir_sh)
if [[ $TPU_LOG_WORKER == all ]]; then
  # shellcheck disable=SC2016  # expanded on the workers
  command=$(kit_join "; " "cd $REMOTE_DIR" "$KIT_REMOTE_WORKER_ID" \
    "$tail_cmd logs/$stem.worker\$W.log 2>&1 | sed -u \"s/^/[worker \$W] /\"")
else
  command="cd $REMOTE_DIR && $tail_cmd logs/$stem.worker$TPU_LOG_WORKER.log"
fi
if [[ $TPU_LOG_WORKER != all && $TPU_LOG_FOLLOW == 1 ]]; then
  # A terminal on the worker, so that Ctrl-C here also ends the remote tail.
  TPU_SSH_ARGS="${TPU_SSH_ARGS:+$TPU_SSH_ARGS }--ssh-flag=-t"
fi
kit_ssh "$TPU_LOG_WORKER" "$command"
