"""The README, walked as a newcomer walks it: every command of its ```sh blocks, taken from
README.md itself (so the README and this test cannot drift apart), run in the README's order,
each where it can run here:

- `fresh`: on a just-installed Debian host, simulated by a user+mount+PID namespace with its
  own binfmt_misc and private copies (overlays) of /etc, /opt, /usr/local, /root, apt's lists
  and cache, and a private /var/lib/binfmtd; the commands run verbatim, as root, from the top of
  this checkout, and nothing of the real host changes;
- `container`: the container image steps, on the host (rootful podman shares the host's table),
  with binfmtd's state directory private to the test, the host's entries set aside and put back;
- a reason why not (the test run itself, other hosts, systemd).

A command the table below does not know fails the test: a new command in the README needs a
decision here. The help and completion a newcomer meets next are checked at the end."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from binfmtd.targets import TARGETS

from conftest import BINFMT_MISC, ROOT, host_table, need, set_aside

README = ROOT / "README.md"

# Where each README command runs (regex on the command, a place or the reason it does not run).
NOT_HERE = "not here: "
WHERE = [
    (r"scripts/install && binfmtd apply && binfmtd status", "fresh"),
    (r"scripts/test", NOT_HERE + "it is this test run; CI runs it after the set-up command (.ci/run)"),
    (r"binfmtd sandbox -- .*", "fresh"),
    (r"binfmtd export .*|update-binfmts .*", "fresh"),
    (r"scripts/build-deb|packaging/container/make-base|podman build .*|mkdir -p /var/lib/binfmtd|podman run .*",
     "container"),
    (r"ANSIBLE_COLLECTIONS_PATH=packaging/ansible ansible-playbook -i localhost, -c local .*",
     NOT_HERE + "the role enables and starts binfmtd.service, and systemd does not run here "
     "(tests/test_ansible.py runs the role's install, config, apply and verify)"),
    (r"ANSIBLE_COLLECTIONS_PATH=packaging/ansible ansible-playbook -i inventory.ini .*",
     NOT_HERE + "it needs an inventory of other hosts"),
    (r"docker run (--privileged --rm|--rm --privileged) registry\.example\.com/binfmtd:\S+ (--install all|--reset -p yes)",
     NOT_HERE + "registry.example.com stands for the reader's registry; tests/test_compat.py runs these two lines "
     "with binfmtd's image served from a registry on 127.0.0.1"),
]


def readme_commands(text: str) -> list[str]:
    """Every command of every ```sh block, in order; a line ending in a backslash continues."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        for command in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                commands.append(command.strip())
    return commands


def where(command: str) -> str | None:
    return next((place for pattern, place in WHERE if re.fullmatch(pattern, command)), None)


COMMANDS = readme_commands(README.read_text())


def test_every_readme_command_is_walked_or_says_why_not():
    unknown = [c for c in COMMANDS if where(c) is None]
    assert not unknown, f"README commands this test does not know; add them to WHERE: {unknown}"
    # .ci/run runs these two, in this order, on a fresh machine.
    assert COMMANDS[:2] == ["scripts/install && binfmtd apply && binfmtd status", "scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if line in COMMANDS or line == "exec scripts/test -q"] == \
        ["scripts/install && binfmtd apply && binfmtd status", "exec scripts/test -q"]
    assert not any("sudo" in c.split() for c in COMMANDS)  # minimal Debian has none; the README says "as root"


def test_the_extraction_reads_blocks_in_order_and_joins_continued_lines():
    text = "a\n```sh\none \\\n  two\n# comment\n\nthree\n```\n```toml\nx = 1\n```\n```sh\nfour\n```\n"
    assert readme_commands(text) == ["one two", "three", "four"]


# --- a fresh host --------------------------------------------------------------------------

# Mounted before the commands run. /var/lib stays the host's (dpkg, containers) except for a
# private binfmtd directory: a tmpfs over /var/lib holds bind mounts of each of its entries.
FRESH_HOST = r"""
set -e
for d in /etc /opt /usr/local /root /var/lib/apt /var/cache/apt; do
  n=$(echo "$d" | tr / _)
  mkdir -p "$WORK/upper$n" "$WORK/work$n"
  # userxattr: in a user namespace, overlayfs keeps its whiteouts in user.* xattrs; without it,
  # deleting or replacing a directory of the lower layer fails with EIO.
  mount -t overlay overlay -o "userxattr,lowerdir=$d,upperdir=$WORK/upper$n,workdir=$WORK/work$n" "$d"
done
# What the README's set-up installed, where this host ran it (CI does, before the tests): a fresh
# host has none of it.
rm -rf /opt/binfmtd /usr/local/bin/binfmtd /etc/binfmtd /etc/apt/apt.conf.d/80binfmtd \
  /etc/systemd/system/binfmtd.service /etc/systemd/system/binfmtd-daemon.service
mkdir "$WORK/var-lib"
mount --rbind /var/lib "$WORK/var-lib"
mount -t tmpfs -o mode=0755 tmpfs /var/lib
for p in "$WORK"/var-lib/*; do
  n=${p##*/}
  case $n in binfmtd|binfmts) continue ;; esac  # binfmtd's and binfmt-support's state: fresh
  if [ -L "$p" ]; then cp -P "$p" "/var/lib/$n"; continue; fi
  if [ -d "$p" ]; then mkdir "/var/lib/$n"; else touch "/var/lib/$n"; fi
  mount --rbind "$p" "/var/lib/$n"
done
mkdir /var/lib/binfmts
mount -t binfmt_misc binfmt_misc """ + BINFMT_MISC + r"""
cd "$CHECKOUT"
"""


def run_fresh(tmp_path: Path, commands: list[str]) -> list[tuple[int, str, str]]:
    """The commands, verbatim and in order, each in `sh -c`, on the simulated fresh host; each
    one's exit code, stdout and stderr, and the table and state after it."""
    lines = [FRESH_HOST]
    for i, command in enumerate(commands):
        lines.append(f"sh -c {shlex.quote(command)} >$WORK/{i}.out 2>$WORK/{i}.err && echo 0 >$WORK/{i}.rc "
                     f"|| echo $? >$WORK/{i}.rc")
        lines.append(f"ls {BINFMT_MISC} >$WORK/{i}.table; cat /var/lib/binfmtd/state.json >$WORK/{i}.state "
                     "2>/dev/null || true")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "WORK": str(tmp_path), "CHECKOUT": str(ROOT), "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "--pid",
                           "--fork", "--mount-proc", "sh", "-c", "\n".join(lines)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"the simulated host could not be set up: {done.stderr}"
    return [(int((tmp_path / f"{i}.rc").read_text()), (tmp_path / f"{i}.out").read_text(),
             (tmp_path / f"{i}.err").read_text(), (tmp_path / f"{i}.table").read_text().split(),
             (tmp_path / f"{i}.state").read_text()) for i in range(len(commands))]


def test_readme_commands_work_as_written_on_a_fresh_host(ns, tmp_path):
    """`ns` only checks that this kernel gives a namespace its own binfmt_misc."""
    need(os.path.exists("/usr/bin/qemu-aarch64-static") and os.path.exists("/usr/sbin/update-binfmts"),
         "qemu-user-static and binfmt-support are not installed (scripts/test installs them)")
    installed = subprocess.run(["dpkg-query", "-W", "-f", "${Status}\n", "qemu-user-static", "python3-venv",
                                "util-linux"], capture_output=True, text=True).stdout
    need(installed.count("install ok installed") == 3, "scripts/install's Debian packages are not all installed: "
         "the simulated host would install them into the real /usr")
    host_before = {p: os.path.lexists(p) for p in ("/usr/local/bin/binfmtd", "/opt/binfmtd", "/etc/binfmtd",
                                                   "/var/lib/binfmtd", "/etc/binfmtd/binfmts")}
    fresh = [c for c in COMMANDS if where(c) == "fresh"]
    # What an earlier build of an older checkout left in ./build must not be installed (setuptools
    # would copy it into the wheel): a module an upgrade removed stays gone.
    leftover = ROOT / "build" / "lib" / "binfmtd" / "removed_by_an_upgrade.py"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_text("raise SystemExit('an old build was installed')\n")
    steps = run_fresh(tmp_path, fresh)
    for command, (rc, out, err, table, state) in zip(fresh, steps):
        assert rc == 0, f"README command failed ({rc}): {command}\n{out}\n{err}"
        assert "Traceback" not in err, err
    by_command = dict(zip(fresh, steps))

    # The set-up: every foreign target registered by binfmtd and shown.
    _, out, _, table, _ = by_command["scripts/install && binfmtd apply && binfmtd status"]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("qemu-")}
    assert rows["qemu-aarch64"][1:3] == ["aarch64", "linux/arm64"] and "binfmtd" in rows["qemu-aarch64"]
    assert {"qemu-aarch64", "qemu-arm", "qemu-riscv64", "qemu-s390x"} <= set(table)

    # The sandbox example: exit 0 (above), the target it applied verified, and nothing of the
    # "host" (the simulated one) changed: its table, nor binfmtd's state there.
    command = next(c for c in fresh if c.startswith("binfmtd sandbox"))
    _, out, err, table, state = by_command[command]
    previous = steps[fresh.index(command) - 1]
    assert re.search(r"^aarch64\s+linux/arm64\s+ok\s+aarch64\s", out, re.M), out + err
    assert "FAILED" not in out and "cause:" not in out
    assert table == previous[3]
    assert state == previous[4], "the sandbox wrote the host's /var/lib/binfmtd"

    # The export for binfmt-support, imported from binfmtd's own directory.
    assert any(c.startswith("update-binfmts --importdir /etc/binfmtd/binfmts") for c in fresh)

    installed = list((tmp_path / "upper_opt").glob("binfmtd/lib/python3*/site-packages/binfmtd"))
    assert installed and not (installed[0] / "removed_by_an_upgrade.py").exists()

    host_after = {p: os.path.lexists(p) for p in host_before}
    assert host_after == host_before, "the walk changed the real host"


# --- the container image, on the host ------------------------------------------------------

def test_readme_container_image_steps_work_as_written(tmp_path):
    need(os.geteuid() == 0, "the container steps run rootful podman: run as root")
    need(all(shutil.which(t) for t in ("podman", "runc", "debootstrap", "dpkg-deb")),
         "podman, runc, debootstrap and dpkg-deb are needed (scripts/test installs them)")
    steps = [c for c in COMMANDS if where(c) == "container"]
    assert steps[:3] == ["scripts/build-deb", "packaging/container/make-base",
                         "podman build -t binfmtd -f packaging/container/Containerfile ."]
    conf = tmp_path / "containers.conf"
    # What podman needs on these VMs; the product never writes this.
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
                    '[engine]\nruntime = "runc"\n')
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    image_existed = subprocess.run(["podman", "image", "exists", "localhost/binfmtd:latest"], env=env).returncode == 0
    # The README's /var/lib/binfmtd, private to this mount namespace (the host's stays as it is).
    script = ["set -e", f"mkdir -p {tmp_path}/var-lib", f"mount --rbind /var/lib {tmp_path}/var-lib",
              "mount -t tmpfs -o mode=0755 tmpfs /var/lib",
              f'for p in {tmp_path}/var-lib/*; do n=${{p##*/}}; [ "$n" = binfmtd ] && continue; '
              'if [ -L "$p" ]; then cp -P "$p" /var/lib/$n; continue; fi; '
              'if [ -d "$p" ]; then mkdir /var/lib/$n; else touch /var/lib/$n; fi; mount --rbind "$p" /var/lib/$n; done',
              f"cd {shlex.quote(str(ROOT))}"]
    for i, command in enumerate(steps):
        script.append(f"sh -c {shlex.quote(command)} >{tmp_path}/{i}.out 2>{tmp_path}/{i}.err "
                      f"&& echo 0 >{tmp_path}/{i}.rc || echo $? >{tmp_path}/{i}.rc")
    script.append(f"cat /var/lib/binfmtd/state.json >{tmp_path}/state.json")
    names = [t.entry_name for t in TARGETS]
    with host_table(), set_aside(*names):
        before = set(os.listdir(BINFMT_MISC))
        try:
            done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script)],
                                  env=env, capture_output=True, text=True, timeout=1800)
            assert done.returncode == 0, done.stderr
            for i, command in enumerate(steps):
                rc = int((tmp_path / f"{i}.rc").read_text())
                assert rc == 0, f"README command failed ({rc}): {command}\n" + (tmp_path / f"{i}.err").read_text()
            registered = set(os.listdir(BINFMT_MISC)) - before
            assert {"qemu-aarch64", "qemu-riscv64", "qemu-s390x"} <= registered
            ours = set(json.loads((tmp_path / "state.json").read_text())["entries"])
            assert registered <= ours  # the volume kept what the container registered
            status = (tmp_path / f"{len(steps) - 1}.out").read_text()
            assert re.search(r"^qemu-aarch64\s+aarch64\s+linux/arm64\s+enabled\s+POCF\s+binfmtd\s", status, re.M), status
        finally:
            for name in set(os.listdir(BINFMT_MISC)) - before:
                Path(BINFMT_MISC, name).write_text("-1")
            if not image_existed:
                subprocess.run(["podman", "rmi", "localhost/binfmtd:latest"], env=env, capture_output=True)


# --- help and completion --------------------------------------------------------------------

def binfmtd(*args: str, env: dict | None = None, python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "binfmtd", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=60)


# This checkout's typer, and Debian's (python3-typer, what the .deb runs with) where installed:
# each spells usage and argument help its own way.
PYTHONS = [sys.executable] + [python for python in ["/usr/bin/python3"] if subprocess.run(
    [python, "-c", "import typer"], capture_output=True).returncode == 0]


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("command", ["apply", "remove", "check", "verify", "export", "status", "targets",
                                     "daemon", "sandbox"])
def test_help_reads_cleanly(command, python):
    done = binfmtd(command, "--help", python=python)
    assert done.returncode == 0, done.stderr
    for noise in ("[[", "]...]...", "<list", "<str>", "<float>", "{--", "}..."):
        assert noise not in done.stdout, f"{command} --help shows {noise!r}:\n{done.stdout}"
    usage = done.stdout.splitlines()[0]
    if command in ("apply", "remove", "check", "verify", "export"):
        assert usage == f"Usage: binfmtd {command} [OPTIONS] [TARGET]..." and "TARGET: a QEMU target" in done.stdout
    if command == "sandbox":
        assert usage == "Usage: binfmtd sandbox [OPTIONS] -- COMMAND [ARG]..."


@pytest.mark.parametrize("shell,first_line", [("zsh", "#compdef binfmtd"), ("bash", "_binfmtd_completion() {"),
                                              ("fish", "complete --command binfmtd")])
def test_show_completion_prints_the_named_shells_script(shell, first_line):
    done = binfmtd("--show-completion", shell, env={"SHELL": "/bin/bash"})
    assert done.returncode == 0 and done.stdout.startswith(first_line), done.stdout[:200] + done.stderr


def complete(words: str) -> list[str]:
    done = binfmtd(env={"_BINFMTD_COMPLETE": "complete_bash", "COMP_WORDS": words,
                        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))})
    return done.stdout.split()


def test_completion_knows_targets_platforms_engines_and_formats():
    assert {"aarch64", "arm"} <= set(complete("binfmtd apply a")) and "riscv64" not in complete("binfmtd apply a")
    assert {"linux/arm64", "linux/arm/v7", "linux/arm/v6"} <= set(complete("binfmtd verify linux/ar"))
    assert complete("binfmtd verify --engine p") == ["podman"]
    assert set(complete("binfmtd export --format ")) == {"binfmt.d", "binfmt-support"}
    assert complete("binfmtd status --format p") == ["prometheus"]
    assert "sandbox" in complete("binfmtd s")


def test_install_completion_for_a_named_shell(tmp_path):
    done = binfmtd("--install-completion", "zsh", env={"HOME": str(tmp_path), "SHELL": "/bin/bash"})
    assert done.returncode == 0 and "zsh completion installed" in done.stdout, done.stderr
    assert (tmp_path / ".zfunc" / "_binfmtd").read_text().startswith("#compdef binfmtd")


def readme_use_list(text: str) -> dict[str, str]:
    """The README's Use list: command -> its line and continuation lines."""
    block = re.search(r"^## Use\n\n```\n(.*?)^```", text, re.M | re.S).group(1)
    usage: dict[str, str] = {}
    for line in block.splitlines():
        if line.startswith("binfmtd "):
            command = line.split()[1]
            usage[command] = line
        else:
            usage[command] += " " + line.strip()
    return usage


def test_the_readme_use_list_names_every_command_and_option():
    usage = readme_use_list(README.read_text())
    from binfmtd.cli.app import app
    import typer.main

    commands = typer.main.get_command(app).commands
    assert set(usage) == set(commands), "the README's Use list and the CLI's commands differ"
    for name, command in commands.items():
        options = {opt for param in command.params for opt in getattr(param, "opts", ()) if opt.startswith("--")}
        missing = sorted(opt for opt in options if not re.search(rf"{re.escape(opt)}\b", usage[name]))
        assert not missing, f"the README's Use list lacks binfmtd {name} {missing}"


def test_the_readme_config_example_is_a_valid_config(tmp_path):
    example, = re.findall(r"^```toml\n(.*?)^```", README.read_text(), re.M | re.S)
    (tmp_path / "binfmtd.toml").write_text(example)
    env = {"BINFMTD_STATE_DIR": str(tmp_path / "state")}  # nothing of the host's, even if it were written
    done = binfmtd("check", "--config", str(tmp_path / "binfmtd.toml"), "--json", env=env)
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["config"]["ok"], checks["config"]
    planned = binfmtd("apply", "--check", "--json", "--config", str(tmp_path / "binfmtd.toml"), env=env)
    assert planned.returncode == 0, planned.stderr
    assert {r["target"] for r in json.loads(planned.stdout)["results"]} == {"aarch64", "arm", "riscv64"}
