#!/usr/bin/env bash
# Create a TPU VM or pod slice (on-demand, spot or preemptible).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KIT_SUMMARY="Create a TPU VM (single host, e.g. v5litepod-8, v4-8) or a pod slice (several hosts, e.g. v4-32)."
KIT_DETAILS="On-demand and --preemptible slices are created with 'gcloud compute tpus tpu-vm create', which returns once
the slice is READY. --spot slices are requested as a queued resource ('gcloud compute tpus queued-resources create',
the recommended way to get spot capacity); the script then waits (--wait) until the request is ACTIVE.
--version auto picks the runtime image Google recommends for JAX on that generation:
  v6e -> v2-alpha-tpuv6e, v5p -> v2-alpha-tpuv5, v5litepod/v5e -> v2-alpha-tpuv5-lite, v4 and older -> tpu-ubuntu2204-base."
KIT_EXAMPLES="  $KIT_SCRIPT --zone us-west4-a --accelerator-type v5litepod-8
  $KIT_SCRIPT --zone us-central2-b --accelerator-type v4-32 --spot --name seal-v4
  TPU_ZONE=us-central2-b TPU_ACCELERATOR_TYPE=v4-8 $KIT_SCRIPT --preemptible --dry-run"

kit_common_opts
kit_opt --accelerator-type TPU_ACCELERATOR_TYPE TYPE "v5litepod-8" "Accelerator type: v5litepod-8, v4-8, v4-32, v6e-8, ..."
kit_opt --version TPU_RUNTIME_VERSION VERSION "auto" "TPU runtime (software) version; auto: chosen from the accelerator type."
kit_opt --spot TPU_SPOT - 0 "Spot capacity (cheaper, can be preempted at any time): via a queued resource."
kit_opt --preemptible TPU_PREEMPTIBLE - 0 "Legacy preemptible TPU (preempted at the latest after 24 h)."
kit_opt --queued TPU_QUEUED - 0 "Request through a queued resource even without --spot (waits for capacity)."
kit_opt --direct TPU_DIRECT - 0 "With --spot: use 'tpu-vm create --spot' instead of a queued resource."
kit_opt --wait TPU_WAIT - 1 "Queued resources: poll until ACTIVE (fails if the request FAILED or was SUSPENDED)."
kit_opt --wait-timeout TPU_WAIT_TIMEOUT SECONDS 7200 "Give up waiting after this many seconds (the request stays queued)."
kit_opt --create-args TPU_CREATE_ARGS ARGS "" "Extra gcloud create flags, space-separated (e.g. '--network=my-net --reserved')."
kit_parse "$@"

runtime_for() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v4-* | v3-* | v2-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

[[ $TPU_ACCELERATOR_TYPE =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
  kit_die "--accelerator-type '$TPU_ACCELERATOR_TYPE' does not look like v5litepod-8 / v4-8 / v4-32 / v6e-8"
if [[ $TPU_RUNTIME_VERSION == auto ]]; then
  TPU_RUNTIME_VERSION=$(runtime_for "$TPU_ACCELERATOR_TYPE") ||
    kit_die "no default runtime for '$TPU_ACCELERATOR_TYPE': pass --version (see 'gcloud compute tpus tpu-vm versions list')"
fi
[[ $TPU_WAIT_TIMEOUT =~ ^[0-9]+$ ]] || kit_die "--wait-timeout '$TPU_WAIT_TIMEOUT' is not a number of seconds"
if [[ $TPU_SPOT == 1 && $TPU_PREEMPTIBLE == 1 ]]; then kit_die "--spot and --preemptible exclude each other"; fi
if [[ $TPU_PREEMPTIBLE == 1 && $TPU_QUEUED == 1 ]]; then
  kit_die "--preemptible is only available with 'tpu-vm create'; drop --queued (or use --spot)"
fi

EXTRA=()
if [[ -n $TPU_CREATE_ARGS ]]; then read -r -a EXTRA <<<"$TPU_CREATE_ARGS"; fi
kit_loc_flags

if kit_use_queued; then
  cmd=(gcloud compute tpus queued-resources create "$TPU_NAME" "--node-id=$TPU_NAME" "${KIT_LOC[@]}"
    "--accelerator-type=$TPU_ACCELERATOR_TYPE" "--runtime-version=$TPU_RUNTIME_VERSION")
  if [[ $TPU_SPOT == 1 ]]; then cmd+=(--spot); fi
  kit_run "${cmd[@]}" ${EXTRA[@]+"${EXTRA[@]}"}

  describe=(gcloud compute tpus queued-resources describe "$TPU_NAME" "${KIT_LOC[@]}" "--format=value(state.state)")
  if [[ $TPU_WAIT != 1 ]]; then
    kit_info "queued; check with: $(kit_quote "${describe[@]}")"
    exit 0
  fi
  if kit_is_dry_run; then
    kit_run "${describe[@]}" # polled until ACTIVE
    exit 0
  fi
  kit_info "waiting for queued resource '$TPU_NAME' to become ACTIVE (up to ${TPU_WAIT_TIMEOUT}s; Ctrl-C stops waiting, not the request)"
  start=$SECONDS
  while :; do
    state=$("${describe[@]}" 2>/dev/null || echo UNKNOWN)
    case $state in
      ACTIVE)
        kit_info "ACTIVE: slice '$TPU_NAME' is ready"
        break
        ;;
      FAILED | SUSPENDED | SUSPENDING)
        kit_die "queued resource '$TPU_NAME' is $state; see: gcloud compute tpus queued-resources describe $TPU_NAME --zone=$TPU_ZONE"
        ;;
    esac
    if ((SECONDS - start > TPU_WAIT_TIMEOUT)); then
      kit_die "still $state after ${TPU_WAIT_TIMEOUT}s; the request stays queued (delete it with tpu/delete.sh --spot)"
    fi
    kit_info "state: $state (waited $((SECONDS - start))s)"
    sleep 30
  done
else
  cmd=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${KIT_LOC[@]}"
    "--accelerator-type=$TPU_ACCELERATOR_TYPE" "--version=$TPU_RUNTIME_VERSION")
  if [[ $TPU_SPOT == 1 ]]; then cmd+=(--spot); fi
  if [[ $TPU_PREEMPTIBLE == 1 ]]; then cmd+=(--preemptible); fi
  kit_run "${cmd[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
fi

if ! kit_is_dry_run; then
  kit_info "next: tpu/setup.sh --name $TPU_NAME --zone $TPU_ZONE${TPU_PROJECT:+ --project $TPU_PROJECT}"
fi
