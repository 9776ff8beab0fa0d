#!/usr/bin/env bash
# Launch an experiment module on every worker, detached from the ssh session.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KIT_SUMMARY="Run 'python -m experiments.MODULE FLAGS --distributed' on every worker (--worker=all), in the background."
KIT_DETAILS="Every worker runs the same command line (JAX multi-controller: one process per host). --distributed makes the
module call jax.distributed.initialize(), which on Cloud TPU finds the other hosts by itself: no coordinator
address, process count or id to pass. The job is started with setsid + nohup, stdin/stdout/stderr redirected, so
closing this terminal or a dropped ssh connection does not stop it. Each worker writes
  --remote-dir/logs/RUN_NAME.workerN.log   (and the symlink logs/latest.workerN.log -> it)
  --remote-dir/logs/job.workerN.pid        (used by tpu/stop.sh, and to refuse a second launch while one runs)
Module flags come from --flags (one string, split by the remote shell) and/or everything after '--' (each word
quoted as given). Relative paths in them (e.g. --out runs/x) are relative to --remote-dir. Only process 0 writes
results; fetch them from worker 0 with tpu/fetch.sh. Re-running the same command after a stop or preemption resumes."
KIT_POSITIONAL="[-- MODULE_FLAGS...]"
KIT_EXAMPLES="  $KIT_SCRIPT --module knowledge_incorporation -- eval --model /mnt/qwen2.5-7b --mesh 4,4 --out runs/eval-7b
  $KIT_SCRIPT --module inner_loop_job -- --preset small-qwen2 --adapters 64 --mesh 8,1 --out runs/inner-64
  $KIT_SCRIPT --module inner_loop_job --flags '--preset llama-3.2-1b --adapters 256 --mesh 32,1 --out runs/l1b'
  $KIT_SCRIPT --module bench_inner_loop --no-distributed --env 'XLA_FLAGS=--xla_dump_to=/tmp/xla' -- --json"

kit_common_opts
kit_remote_opts
kit_opt --module TPU_MODULE MODULE "inner_loop_job" "Module under experiments/ (experiments.MODULE; the prefix is optional)."
kit_opt --flags TPU_FLAGS FLAGS "" "Module flags as one string (put before the flags given after --)."
kit_opt --distributed TPU_DISTRIBUTED - 1 "Append --distributed (jax.distributed.initialize(); needed on multi-host slices)."
kit_opt --run-name TPU_RUN_NAME NAME "" "Log file name stem (empty: MODULE-<UTC time>)."
kit_opt --env TPU_ENV VARS "" "Environment for the job, space-separated KEY=VALUE words (e.g. 'XLA_FLAGS=... JAX_COMPILATION_CACHE_DIR=...')."
kit_parse "$@"

MODULE=${TPU_MODULE#experiments.}
[[ $MODULE =~ ^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$ ]] || kit_die "--module '$TPU_MODULE' is not a module name"
RUN_NAME=${TPU_RUN_NAME:-$MODULE-$(date -u +%Y%m%d-%H%M%S)}
[[ $RUN_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || kit_die "--run-name '$RUN_NAME': use letters, digits, '_', '.', '-'"

# The python command line, as the remote shell will see it.
python_cmd=".venv/bin/python -m experiments.$MODULE"
if [[ -n $TPU_FLAGS ]]; then python_cmd+=" $TPU_FLAGS"; fi
if ((${#KIT_ARGS[@]} > 0)); then python_cmd+=" $(kit_quote "${KIT_ARGS[@]}")"; fi
if [[ $TPU_DISTRIBUTED == 1 ]]; then
  case " $TPU_FLAGS ${KIT_ARGS[*]-} " in
    *" --distributed "*) ;;
    *) python_cmd+=" --distributed" ;;
  esac
fi
env_words=()
if [[ -n $TPU_ENV ]]; then
  read -r -a env_words <<<"$TPU_ENV"
  for word in ${env_words[@]+"${env_words[@]}"}; do
    [[ $word =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || kit_die "--env: '$word' is not KEY=VALUE"
  done
  if ((${#env_words[@]} > 0)); then python_cmd="env $(kit_quote "${env_words[@]}") $python_cmd"; fi
fi

REMOTE_DIR=$(kit_remote_dir_sh)
# shellcheck disable=SC2016  # $W, $LOG, $PIDF, $! are expanded on the workers
steps=("set -e" "cd $REMOTE_DIR" "mkdir -p logs" "$KIT_REMOTE_WORKER_ID"
  'PIDF=logs/job.worker$W.pid'
  'if [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; then echo "worker $W: job $(cat "$PIDF") is still running; stop it first (tpu/stop.sh)" >&2; exit 1; fi'
  "LOG=logs/$RUN_NAME.worker\$W.log"
  "ln -sfn $RUN_NAME.worker\$W.log logs/latest.worker\$W.log"
  'echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname) worker $W" > "$LOG"'
  "{ setsid nohup $python_cmd >> \"\$LOG\" 2>&1 < /dev/null & }"
  'echo $! > "$PIDF"'
  "echo \"worker \$W: started pid \$! -> $REMOTE_DIR/\$LOG\"")
kit_ssh all "$(kit_join "; " "${steps[@]}")"

if ! kit_is_dry_run; then
  kit_info "run name: $RUN_NAME; follow worker 0 with: tpu/logs.sh --name $TPU_NAME --zone $TPU_ZONE --run-name $RUN_NAME"
fi
