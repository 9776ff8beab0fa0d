#!/usr/bin/env bash
# Delete the slice (and its queued resource).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KIT_SUMMARY="Delete the TPU VM / slice. Asks for confirmation unless --yes. Everything on its disks is lost."
KIT_DETAILS="A slice made through a queued resource (--spot, --queued) is deleted with
'gcloud compute tpus queued-resources delete --force', which removes the request and its TPU VM together; others
with 'gcloud compute tpus tpu-vm delete'. Without --spot/--queued the script asks gcloud whether a queued resource
of that name exists and, if so, deletes it that way (not under --dry-run, which runs nothing).
Fetch your results first (tpu/fetch.sh)."
KIT_EXAMPLES="  $KIT_SCRIPT --name seal-jax --zone us-west4-a
  $KIT_SCRIPT --spot --yes"

kit_common_opts
kit_opt --yes TPU_YES - 0 "Do not ask for confirmation."
kit_opt --spot TPU_SPOT - 0 "The slice was created with --spot (so through a queued resource, unless --direct)."
kit_opt --queued TPU_QUEUED - 0 "The slice was created through a queued resource."
kit_opt --direct TPU_DIRECT - 0 "With --spot: it was created with 'tpu-vm create --spot' (no queued resource)."
kit_parse "$@"

kit_loc_flags
where="'$TPU_NAME' in $TPU_ZONE${TPU_PROJECT:+ (project $TPU_PROJECT)}"
if ! kit_is_dry_run && [[ $TPU_YES != 1 ]]; then
  [[ -t 0 ]] || kit_die "not deleting $where without confirmation: pass --yes"
  read -r -p "Delete TPU $where and everything on its disks? [y/N] " answer
  case $answer in
    y | Y | yes | YES) ;;
    *)
      kit_info "not deleted"
      exit 1
      ;;
  esac
fi

queued=0
if kit_use_queued; then
  queued=1
elif ! kit_is_dry_run && gcloud compute tpus queued-resources describe "$TPU_NAME" "${KIT_LOC[@]}" >/dev/null 2>&1; then
  kit_info "found a queued resource named '$TPU_NAME': deleting it with its TPU VM"
  queued=1
fi
if ((queued)); then
  kit_run gcloud compute tpus queued-resources delete "$TPU_NAME" "${KIT_LOC[@]}" --force --quiet
else
  kit_run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${KIT_LOC[@]}" --quiet
fi
