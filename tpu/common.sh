# shellcheck shell=bash
# Shared helpers for the tpu/*.sh launch kit. Sourced, never run.
#
# Each script declares its options with `kit_opt` (one line each: flag, environment variable, metavar, default, help),
# then calls `kit_parse "$@"`. That gives every script the same behaviour for free:
#   --flag VALUE / --flag=VALUE, --bool / --no-bool, an environment-variable fallback for every option,
#   --help generated from the declarations (with defaults), and `--` to pass the rest through (KIT_ARGS).
# Commands go through `kit_run`, which prints them instead of running them under --dry-run.
#
# Written for bash >= 3.2 (macOS' /bin/bash): no associative arrays, no `[[ -v ]]`, and empty arrays are expanded as
# ${a[@]+"${a[@]}"} because `set -u` rejects "${a[@]}" on an empty array before bash 4.4.

if [[ -n ${_KIT_COMMON_LOADED:-} ]]; then return 0; fi
_KIT_COMMON_LOADED=1

KIT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by the sourcing scripts
REPO_ROOT="$(cd "$KIT_DIR/.." && pwd)"
KIT_SCRIPT="tpu/$(basename "$0")"
# shellcheck disable=SC2034  # used by the sourcing scripts
KIT_LIBTPU_URL_DEFAULT="https://storage.googleapis.com/jax-releases/libtpu_releases.html"

KIT_SUMMARY=""   # one line, set by the script
KIT_DETAILS=""   # a paragraph or more, set by the script (optional)
KIT_EXAMPLES=""  # example invocations, set by the script (optional)
KIT_POSITIONAL="" # e.g. "[-- MODULE_FLAGS...]"; empty: the script takes no positional arguments
KIT_ARGS=()

_KIT_FLAGS=()
_KIT_VARS=()
_KIT_METAVARS=()
_KIT_DEFAULTS=()
_KIT_HELPS=()

# ---------------------------------------------------------------------------------------------------------------- io

kit_die() {
  printf '%s: error: %s\n' "$KIT_SCRIPT" "$*" >&2
  exit 2
}

kit_info() {
  printf '%s: %s\n' "$KIT_SCRIPT" "$*" >&2
}

# Quote words so that the printed line can be pasted back into a shell: plain words stay bare, the others are
# single-quoted (a ' inside becomes '\'').
kit_quote() {
  local out="" word sq="'\\''"
  for word in "$@"; do
    if [[ -n $word && $word != *[!A-Za-z0-9_@%+=:,./-]* ]]; then
      out+="${out:+ }$word"
    else
      out+="${out:+ }'${word//\'/$sq}'"
    fi
  done
  printf '%s\n' "$out"
}

# Run a command, or under --dry-run print it (to stdout, one line, shell-quoted) and return success.
kit_run() {
  if [[ $TPU_DRY_RUN == 1 ]]; then
    kit_quote "$@"
    return 0
  fi
  printf '+ %s\n' "$(kit_quote "$@")" >&2
  "$@"
}

kit_is_dry_run() {
  [[ $TPU_DRY_RUN == 1 ]]
}

# --------------------------------------------------------------------------------------------------------- options

# kit_opt FLAG VAR METAVAR DEFAULT HELP
#   METAVAR "-" declares a boolean: --flag sets VAR=1, --no-flag sets VAR=0 (environment: 1/0, true/false, yes/no).
#   The environment variable VAR, when set, overrides DEFAULT; the command line overrides both.
kit_opt() {
  local flag=$1 var=$2 metavar=$3 default=$4 help=$5
  _KIT_FLAGS+=("$flag")
  _KIT_VARS+=("$var")
  _KIT_METAVARS+=("$metavar")
  _KIT_DEFAULTS+=("$default")
  _KIT_HELPS+=("$help")
  if [[ -z ${!var+set} ]]; then
    printf -v "$var" '%s' "$default"
  fi
  if [[ $metavar == - ]]; then
    _kit_set_bool "$var" "${!var}" "environment variable $var"
  fi
}

_kit_set_bool() {
  local var=$1 value=$2 where=$3
  case $value in
    1 | true | True | TRUE | yes | Yes | YES | on | ON) printf -v "$var" '%s' 1 ;;
    0 | false | False | FALSE | no | No | NO | off | OFF | "") printf -v "$var" '%s' 0 ;;
    *) kit_die "$where: expected a boolean (1/0, true/false, yes/no), got '$value'" ;;
  esac
}

# Options every script has.
kit_common_opts() {
  kit_opt --name TPU_NAME NAME "seal-jax" "TPU VM / slice name (also the queued-resource id)."
  kit_opt --zone TPU_ZONE ZONE "us-west4-a" "Zone (v5e: us-west4-a, us-central1-a, ...; v4: us-central2-b)."
  kit_opt --project TPU_PROJECT PROJECT "" "GCP project (empty: gcloud's configured project)."
  kit_opt --dry-run TPU_DRY_RUN - 0 "Print the commands instead of running them."
}

# Options of the scripts that talk to the workers over ssh/scp.
kit_remote_opts() {
  kit_opt --remote-dir TPU_REMOTE_DIR DIR "seal-jax" "Project checkout on every worker (relative: under \$HOME)."
  kit_opt --ssh-args TPU_SSH_ARGS ARGS "" "Extra flags for gcloud tpu-vm ssh AND scp, space-separated (e.g. --internal-ip)."
}

kit_usage() {
  local i flag metavar default current var shown
  printf 'Usage: %s [options]%s\n\n' "$KIT_SCRIPT" "${KIT_POSITIONAL:+ $KIT_POSITIONAL}"
  printf '%s\n' "$KIT_SUMMARY"
  if [[ -n $KIT_DETAILS ]]; then printf '\n%s\n' "$KIT_DETAILS"; fi
  printf '\nOptions (each falls back to the environment variable shown, then to the default):\n'
  printf '  %-32s %s\n' "-h, --help" "Show this help and exit."
  for i in "${!_KIT_FLAGS[@]}"; do
    flag=${_KIT_FLAGS[$i]}
    metavar=${_KIT_METAVARS[$i]}
    default=${_KIT_DEFAULTS[$i]}
    var=${_KIT_VARS[$i]}
    current=${!var}
    if [[ $metavar == - ]]; then
      shown="$flag, --no-${flag#--}"
      [[ $default == 1 ]] && default=on || default=off
      [[ $current == 1 ]] && current=on || current=off
    else
      shown="$flag $metavar"
    fi
    printf '  %-32s %s\n' "$shown" "${_KIT_HELPS[$i]}"
    if [[ $current == "$default" ]]; then
      printf '  %-32s [env %s; default: %s]\n' "" "$var" "${default:-(empty)}"
    else
      printf '  %-32s [env %s; default: %s; now: %s]\n' "" "$var" "${default:-(empty)}" "${current:-(empty)}"
    fi
  done
  if [[ -n $KIT_EXAMPLES ]]; then printf '\nExamples:\n%s\n' "$KIT_EXAMPLES"; fi
}

# kit_parse "$@": set the declared variables from the command line; what follows `--` goes to KIT_ARGS.
kit_parse() {
  local arg flag value has_value i found
  KIT_ARGS=()
  while (($# > 0)); do
    arg=$1
    shift
    case $arg in
      -h | --help)
        kit_usage
        exit 0
        ;;
      --)
        KIT_ARGS=("$@")
        break
        ;;
      --*=*)
        flag=${arg%%=*}
        value=${arg#*=}
        has_value=1
        ;;
      --*)
        flag=$arg
        value=""
        has_value=0
        ;;
      *)
        kit_die "unexpected argument '$arg' (options start with --; see --help)"
        ;;
    esac
    found=0
    for i in "${!_KIT_FLAGS[@]}"; do
      if [[ ${_KIT_METAVARS[$i]} == - ]]; then
        if [[ $flag == "${_KIT_FLAGS[$i]}" ]]; then
          if ((has_value)); then
            _kit_set_bool "${_KIT_VARS[$i]}" "$value" "$flag"
          else
            printf -v "${_KIT_VARS[$i]}" '%s' 1
          fi
          found=1
        elif [[ $flag == "--no-${_KIT_FLAGS[$i]#--}" ]]; then
          ((has_value)) && kit_die "$flag takes no value"
          printf -v "${_KIT_VARS[$i]}" '%s' 0
          found=1
        fi
      elif [[ $flag == "${_KIT_FLAGS[$i]}" ]]; then
        if ((!has_value)); then
          (($# > 0)) || kit_die "$flag needs a value ($flag ${_KIT_METAVARS[$i]})"
          value=$1
          shift
        fi
        printf -v "${_KIT_VARS[$i]}" '%s' "$value"
        found=1
      fi
      ((found)) && break
    done
    ((found)) || kit_die "unknown option '$flag' (see --help)"
  done
  if [[ -z $KIT_POSITIONAL && ${#KIT_ARGS[@]} -gt 0 ]]; then
    kit_die "unexpected arguments after --: ${KIT_ARGS[*]}"
  fi
  _kit_validate_common
}

_kit_validate_common() {
  [[ -n $TPU_NAME ]] || kit_die "--name is empty"
  [[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    kit_die "--name '$TPU_NAME': use lowercase letters, digits and '-', starting with a letter"
  [[ -n $TPU_ZONE ]] || kit_die "--zone is empty"
  [[ $TPU_ZONE =~ ^[a-z0-9-]+$ ]] || kit_die "--zone '$TPU_ZONE' does not look like a zone (e.g. us-west4-a)"
  if [[ -n ${TPU_REMOTE_DIR+set} ]]; then
    [[ $TPU_REMOTE_DIR =~ ^[A-Za-z0-9_./-]+$ ]] ||
      kit_die "--remote-dir '$TPU_REMOTE_DIR': use letters, digits, '_', '.', '/', '-' (relative paths are under \$HOME)"
  fi
}

# Validate a worker selector: "all" or a worker index.
kit_check_worker() {
  local flag=$1 value=$2 allow_all=$3
  if [[ $value == all ]]; then
    [[ $allow_all == 1 ]] || kit_die "$flag: pick one worker (a number), not 'all'"
  elif [[ ! $value =~ ^[0-9]+$ ]]; then
    if [[ $allow_all == 1 ]]; then
      kit_die "$flag '$value': expected a worker index (0, 1, ...) or 'all'"
    fi
    kit_die "$flag '$value': expected a worker index (0, 1, ...)"
  fi
}

# ---------------------------------------------------------------------------------------------------------- gcloud

# Location flags shared by every gcloud call.
kit_loc_flags() {
  KIT_LOC=("--zone=$TPU_ZONE")
  if [[ -n $TPU_PROJECT ]]; then KIT_LOC+=("--project=$TPU_PROJECT"); fi
}

_kit_ssh_extra() {
  KIT_SSH_EXTRA=()
  if [[ -n ${TPU_SSH_ARGS:-} ]]; then read -r -a KIT_SSH_EXTRA <<<"$TPU_SSH_ARGS"; fi
}

# The remote checkout as a shell expression for ssh commands (~/seal-jax) and as an scp path (seal-jax: scp paths
# are relative to the home directory).
kit_remote_dir_sh() {
  if [[ $TPU_REMOTE_DIR == /* ]]; then
    printf '%s\n' "$TPU_REMOTE_DIR"
  else
    # shellcheck disable=SC2088  # the tilde is for the remote shell
    printf '~/%s\n' "$TPU_REMOTE_DIR"
  fi
}

# kit_ssh WORKER COMMAND: run COMMAND (a remote shell command line) on WORKER ("all" or an index).
kit_ssh() {
  local worker=$1 command=$2
  kit_loc_flags
  _kit_ssh_extra
  kit_run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${KIT_LOC[@]}" "--worker=$worker" \
    ${KIT_SSH_EXTRA[@]+"${KIT_SSH_EXTRA[@]}"} --command "$command"
}

# kit_scp WORKER SRC DST [gcloud scp flags...]: remote paths are written NAME:PATH (kit_remote NAME:PATH helper below).
kit_scp() {
  local worker=$1 src=$2 dst=$3
  shift 3
  kit_loc_flags
  _kit_ssh_extra
  kit_run gcloud compute tpus tpu-vm scp "$src" "$dst" "${KIT_LOC[@]}" "--worker=$worker" \
    ${KIT_SSH_EXTRA[@]+"${KIT_SSH_EXTRA[@]}"} "$@"
}

# kit_join SEP WORD...: the words joined by SEP (remote command lines are built as one line of statements).
kit_join() {
  local sep=$1 out="" word
  shift
  for word in "$@"; do out+="${out:+$sep}$word"; done
  printf '%s\n' "$out"
}

# Whether the slice is (to be) managed through a queued resource: --queued, or --spot unless --direct.
kit_use_queued() {
  [[ ${TPU_QUEUED:-0} == 1 ]] || [[ ${TPU_SPOT:-0} == 1 && ${TPU_DIRECT:-0} != 1 ]]
}

# A remote shell snippet that sets W to this worker's index (TPU metadata; falls back to the hostname's -w-N suffix).
# shellcheck disable=SC2016,SC2034  # expanded on the worker, not here; used by the sourcing scripts
KIT_REMOTE_WORKER_ID='W=$(curl -sf -m 5 -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null || hostname | sed -E "s/.*-w-([0-9]+)\$/\1/")'
