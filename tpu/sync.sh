#!/usr/bin/env bash
# Copy the project's code to every worker of the slice.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KIT_SUMMARY="Copy this checkout to every worker (--worker=all) as one tarball, unpacked into --remote-dir."
KIT_DETAILS="The tarball holds the files git knows about: tracked files plus untracked files that are not ignored, as they
are in the working tree now (uncommitted edits included). .venv/, runs/ and logs/ are never sent, and .gitignore
keeps other build outputs out. With --ref, 'git archive REF' is sent instead (exactly that commit). Outside a git
checkout everything but .git/, .venv/, runs/ and logs/ is sent.
Unpacking overwrites files in place; files deleted here stay on the workers unless --clean, which first removes
everything in --remote-dir except .venv/, runs/, logs/ and *.egg-info.
Every worker must run the same code: always sync with --worker=all (this script does) before relaunching."
KIT_EXAMPLES="  $KIT_SCRIPT --name seal-jax --zone us-west4-a
  $KIT_SCRIPT --ref HEAD --clean"

kit_common_opts
kit_remote_opts
kit_opt --ref TPU_SYNC_REF REF "" "Send 'git archive REF' instead of the working tree."
kit_opt --clean TPU_SYNC_CLEAN - 0 "Remove stale code on the workers first (keeps .venv/, runs/, logs/)."
kit_parse "$@"

REMOTE_TARBALL="${TPU_REMOTE_DIR##*/}-sync.tar.gz" # in the remote home directory
LOCAL_TARBALL="${TMPDIR:-/tmp}/seal-jax-sync.$$.tar.gz"

# NUL-separated paths from git -> the ones that exist and are not local state.
existing_paths() {
  local path
  while IFS= read -r -d '' path; do
    case $path in
      .venv/* | runs/* | logs/* | .git/*) continue ;;
    esac
    if [[ -e $path || -L $path ]]; then printf '%s\0' "$path"; fi
  done
}

build_tarball() {
  # COPYFILE_DISABLE keeps macOS tar from adding ._* AppleDouble files.
  export COPYFILE_DISABLE=1
  if [[ -n $TPU_SYNC_REF ]]; then
    git -C "$REPO_ROOT" archive --format=tar.gz -o "$LOCAL_TARBALL" "$TPU_SYNC_REF"
  elif git -C "$REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (
      cd "$REPO_ROOT"
      git ls-files -z --cached --others --exclude-standard | existing_paths | tar --null -T - -czf "$LOCAL_TARBALL"
    )
  else
    tar -C "$REPO_ROOT" --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=./logs -czf "$LOCAL_TARBALL" .
  fi
}

if kit_is_dry_run; then
  if [[ -n $TPU_SYNC_REF ]]; then
    echo "# local: git -C $(kit_quote "$REPO_ROOT") archive --format=tar.gz -o $LOCAL_TARBALL $(kit_quote "$TPU_SYNC_REF")"
  else
    echo "# local: tar of the working tree of $(kit_quote "$REPO_ROOT") (git ls-files --cached --others --exclude-standard; no .venv/ runs/ logs/) -> $LOCAL_TARBALL"
  fi
else
  trap 'rm -f "$LOCAL_TARBALL"' EXIT
  build_tarball
  kit_info "tarball: $(du -h "$LOCAL_TARBALL" | cut -f1)"
fi

kit_scp all "$LOCAL_TARBALL" "$TPU_NAME:$REMOTE_TARBALL"

REMOTE_DIR=$(kit_remote_dir_sh)
steps=("set -e" "mkdir -p $REMOTE_DIR")
if [[ $TPU_SYNC_CLEAN == 1 ]]; then
  steps+=("find $REMOTE_DIR -mindepth 1 -maxdepth 1 ! -name .venv ! -name runs ! -name logs ! -name '*.egg-info' -exec rm -rf {} +")
fi
steps+=("tar -xzf ~/$REMOTE_TARBALL -C $REMOTE_DIR --warning=no-unknown-keyword"
  "rm -f ~/$REMOTE_TARBALL"
  "echo \"\$(hostname): synced into $REMOTE_DIR\"")
kit_ssh all "$(kit_join "; " "${steps[@]}")"
