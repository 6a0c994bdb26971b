"""The Ansible collection binfmtd.binfmt with the real ansible-core: playbooks run against
localhost inside a fresh namespace with its own binfmt_misc, and what the kernel shows, what
the task returned and what ansible-playbook printed are asserted. Ansible's config, home and
temporary directories are all under tmp_path. Also the offline checks `ansible-test sanity`
would make: the module imports, its argument_spec is its DOCUMENTATION, ansible-doc renders it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from binfmtd.config import parse_config
from binfmtd.facts.host import native_targets
from binfmtd.targets import BY_NAME

from conftest import BINFMT_MISC, ROOT, entry_file, need, qemu

BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK, ANSIBLE_DOC = BIN / "ansible-playbook", BIN / "ansible-doc"
COLLECTIONS = ROOT / "packaging" / "ansible"
COLLECTION = COLLECTIONS / "ansible_collections" / "binfmtd" / "binfmt"
MODULE = COLLECTION / "plugins" / "modules" / "binfmt.py"
ROLE = COLLECTION / "roles" / "host"
LIST_ENTRIES = f"ls {BINFMT_MISC}"

NATIVE = {t.name for t in native_targets()}
# Two targets this host cannot run natively; the second named by its container platform.
FIRST, SECOND = [t for t in ("aarch64", "riscv64", "s390x") if t not in NATIVE][:2]
SECOND_PLATFORM = BY_NAME[SECOND].platform


class Ansible:
    """ansible-playbook against localhost (connection local), isolated in tmp_path. Each play
    registers the binfmt task's result and saves it as JSON, whether the task failed or not."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path / "ansible"
        home = self.dir / "home"
        home.mkdir(parents=True)
        (self.dir / "ansible.cfg").write_text("")  # neither /etc/ansible/ansible.cfg nor ./ansible.cfg
        self.env = {
            "ANSIBLE_CONFIG": str(self.dir / "ansible.cfg"), "HOME": str(home), "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
            "ANSIBLE_ROLES_PATH": str(home / "roles"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
            # binfmtd on PATH, as a venv's bin (CI: .venv/bin) puts it there.
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }

    def command(self, plays: list, name: str, *options: str) -> str:
        playbook = self.dir / f"{name}.yml"
        playbook.write_text(json.dumps(plays, indent=2))  # JSON is YAML
        return shlex.join([str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-e",
                           f"ansible_python_interpreter={sys.executable}", *options, str(playbook)])

    def play(self, args: dict, name: str, *options: str) -> str:
        """The command running one binfmtd.binfmt.binfmt task with these arguments."""
        save = {"name": "Save the result", "ansible.builtin.copy": {
            "content": "{{ result | to_json }}", "dest": str(self.dir / f"{name}.json")},
            "check_mode": False, "diff": False, "changed_when": False}
        return self.command([{"hosts": "all", "connection": "local", "gather_facts": False, "tasks": [
            {"block": [{"name": "binfmt", "binfmtd.binfmt.binfmt": args, "register": "result"}],
             "always": [save]}]}], name, *options)

    def result(self, name: str) -> dict:
        return json.loads((self.dir / f"{name}.json").read_text())

    def run(self, *arguments: str, **kwargs) -> subprocess.CompletedProcess:
        """An Ansible command outside the namespace (for what touches no binfmt_misc)."""
        return subprocess.run([str(a) for a in arguments], env={**os.environ, **self.env}, capture_output=True,
                              text=True, timeout=120, **kwargs)


@pytest.fixture
def ansible(tmp_path: Path) -> Ansible:
    need(ANSIBLE_PLAYBOOK.exists(), f"ansible-core is not installed next to {sys.executable} "
         "(pip install -e '.[test]')")
    return Ansible(tmp_path)


def recap(output: str) -> dict[str, int]:
    """The PLAY RECAP counts of localhost."""
    line = re.search(r"^localhost\s+:\s+(.*)$", output, re.M)
    assert line, output
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line.group(1))}


def actions(result: dict) -> dict[str, str]:
    return {r["target"]: r["action"] for r in result["results"]}


def load_module():
    spec = importlib.util.spec_from_file_location("binfmt_module", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- playbooks on the kernel --------------------------------------------------------------

def test_first_run_registers_the_entries_and_the_second_changes_nothing(ns, ansible):
    qemu(FIRST), qemu(SECOND)
    args = {"targets": [FIRST, SECOND_PLATFORM]}
    first, entry, second, listing = ns.run(ansible.play(args, "first"), f"cat {BINFMT_MISC}/qemu-{FIRST}",
                                           ansible.play(args, "second"), LIST_ENTRIES, env=ansible.env)
    assert first.rc == 0, first.out + first.err
    result = ansible.result("first")
    assert result["changed"] is True and result["errors"] == []
    assert actions(result) == {FIRST: "registered", SECOND: "registered"}
    assert recap(first.out)["changed"] == 1
    fields = entry_file(entry.out)
    assert fields["enabled"] == "enabled" and fields["flags"] == "POCF"
    assert fields["interpreter"] == f"/usr/bin/qemu-{FIRST}-static"

    assert second.rc == 0, second.out
    again = ansible.result("second")
    assert again["changed"] is False and actions(again) == {FIRST: "unchanged", SECOND: "unchanged"}
    assert recap(second.out)["changed"] == 0
    assert set(listing.out.split()) == {"register", "status", f"qemu-{FIRST}", f"qemu-{SECOND}"}


def test_check_mode_reports_the_change_and_leaves_the_kernel_untouched(ns, ansible):
    qemu(FIRST)
    check, listing = ns.run(ansible.play({"targets": [FIRST]}, "check", "--check"), LIST_ENTRIES, env=ansible.env)
    assert check.rc == 0, check.out
    result = ansible.result("check")
    assert result["changed"] is True and actions(result) == {FIRST: "registered"}
    assert recap(check.out)["changed"] == 1
    assert set(listing.out.split()) == {"register", "status"}


def test_diff_mode_shows_the_entries_before_and_after(ns, ansible):
    qemu(FIRST)
    args = {"targets": [FIRST]}
    predicted, applied, removed = ns.run(ansible.play(args, "predicted", "--check", "--diff"),
                                         ansible.play(args, "applied", "--diff"),
                                         ansible.play({**args, "state": "absent"}, "removed", "--diff"),
                                         env=ansible.env)
    assert applied.rc == 0, applied.out
    entry = {"enabled": True, "interpreter": f"/usr/bin/qemu-{FIRST}-static", "flags": "POCF", "target": FIRST,
             "owner": "binfmtd"}
    assert ansible.result("applied")["diff"] == {"before": {}, "after": {f"qemu-{FIRST}": entry}}
    assert ansible.result("predicted")["diff"] == ansible.result("applied")["diff"]  # check mode predicts truly
    assert ansible.result("removed")["diff"] == {"before": {f"qemu-{FIRST}": entry}, "after": {}}
    shown = applied.out[applied.out.index("--- before"):]
    assert "+++ after" in shown and f'+    "qemu-{FIRST}": {{' in shown and '+        "owner": "binfmtd"' in shown


def test_state_absent_removes_the_entries(ns, ansible):
    qemu(FIRST), qemu(SECOND)
    targets = {"targets": [FIRST, SECOND]}
    steps = ns.run(ansible.play(targets, "present"), ansible.play({"targets": [FIRST], "state": "absent"}, "absent"),
                   LIST_ENTRIES, ansible.play({"targets": [FIRST], "state": "absent"}, "again"), env=ansible.env)
    absent, listing, again = steps[1:]
    assert absent.rc == 0, absent.out
    result = ansible.result("absent")
    assert result["changed"] is True and actions(result) == {FIRST: "removed"}
    assert set(listing.out.split()) == {"register", "status", f"qemu-{SECOND}"}
    assert ansible.result("again")["changed"] is False and actions(ansible.result("again")) == {FIRST: "unchanged"}


def test_force_takes_over_another_tools_entry(ns, ansible):
    qemu(FIRST)
    target = BY_NAME[FIRST]
    magic, mask = ("".join(f"\\x{b:02x}" for b in field) for field in (target.magic, target.mask))
    line = f":qemu-{FIRST}:M::{magic}:{mask}:/usr/bin/qemu-{FIRST}-static:F"  # as binfmt-support would
    steps = ns.run(f"printf '%s' '{line}' > {BINFMT_MISC}/register", ansible.play({"targets": [FIRST]}, "polite"),
                   ansible.play({"targets": [FIRST], "force": True}, "force"), f"cat {BINFMT_MISC}/qemu-{FIRST}",
                   env=ansible.env)
    registered, polite, force, entry = steps
    assert registered.rc == 0, registered.err
    assert ansible.result("polite")["changed"] is False and actions(ansible.result("polite")) == {FIRST: "skipped"}
    assert "pass --force to take it over" in ansible.result("polite")["results"][0]["reason"]
    assert ansible.result("force")["changed"] is True and actions(ansible.result("force")) == {FIRST: "replaced"}
    assert "flags: POCF\n" in entry.out


@pytest.mark.parametrize("args, message", [
    ({"targets": ["nope"]}, "unknown target or platform 'nope'"),
    ({"targets": [FIRST], "flags": "XYZ"}, "--flags:"),
    ({"config": "{bad}"}, "bad.toml:1: colour: unknown key"),
    ({"state": "absent"}, "name the targets to remove, or pass --all"),
])
def test_usage_errors_fail_the_task_with_binfmtds_message(ns, ansible, args, message):
    bad = ansible.dir / "bad.toml"
    bad.write_text('colour = "blue"\n')
    args = {key: value.format(bad=bad) if isinstance(value, str) else value for key, value in args.items()}
    run, listing = ns.run(ansible.play(args, "bad"), LIST_ENTRIES, env=ansible.env)
    result = ansible.result("bad")
    assert run.rc == 2 and recap(run.out)["failed"] == 1
    assert result["failed"] and message in result["msg"] and "(exit 2: usage error)" in result["msg"]
    assert result["changed"] is False
    assert "fatal: [localhost]: FAILED!" in run.out and message in run.out
    assert set(listing.out.split()) == {"register", "status"}


def test_per_target_errors_are_listed(ns, ansible, tmp_path):
    empty = tmp_path / "no-qemu"
    empty.mkdir()
    config = tmp_path / "c.toml"
    config.write_text(f'interpreter_dirs = ["{empty}"]\n')
    run, = ns.run(ansible.play({"targets": [FIRST], "config": str(config)}, "missing"), env=ansible.env)
    result = ansible.result("missing")
    assert run.rc == 2 and result["failed"]
    assert result["msg"].startswith(f"binfmtd apply: 1 target failed: {FIRST}: no interpreter: qemu-{FIRST}-static "
                                    "not found")
    assert result["errors"] == [{"target": FIRST, "message": result["errors"][0]["message"]}]


def test_a_host_that_cannot_do_it_fails_with_binfmtds_message(ns, ansible):
    # In a further user namespace without a mapping we are uid 65534: binfmtd exits 3.
    run, listing = ns.run("unshare --user " + ansible.play({"targets": [FIRST]}, "nonroot"), LIST_ENTRIES,
                          env=ansible.env)
    result = ansible.result("nonroot")
    assert run.rc == 2 and result["failed"]
    assert result["msg"] == ("binfmtd apply: binfmt_misc can only be changed by root; run it as root "
                             "(exit 3: this host cannot do it)")
    assert set(listing.out.split()) == {"register", "status"}


def test_missing_binfmtd_says_how_to_install_it(ns, ansible):
    blank = ansible.dir / "blank"
    blank.write_text("")
    # Every binfmtd the module could find outside the venv, covered by a blank non-executable
    # file, in this mount namespace only.
    hide = (f"for dir in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do "
            f"if [ -f $dir/binfmtd ]; then mount --bind {blank} $dir/binfmtd || exit 1; fi; done")
    given, found = ns.run(ansible.play({"targets": [FIRST], "binfmtd_path": "/nonexistent/binfmtd"}, "given"),
                          f"{hide} && {ansible.play({'targets': [FIRST]}, 'found')}",
                          env={**ansible.env, "PATH": "/usr/bin:/bin"})
    assert given.rc == 2 and found.rc == 2, found.out + found.err
    assert ansible.result("given")["msg"].startswith("binfmtd_path /nonexistent/binfmtd is not an executable file; "
                                                     "install it on the managed host")
    assert ansible.result("found")["msg"].startswith("binfmtd was not found on PATH, in /usr/local/bin or in "
                                                     "/usr/bin; install it on the managed host")
    assert "pip install binfmtd" in ansible.result("found")["msg"]


def test_verify_runs_the_probes_and_every_run_verifies(ns, ansible):
    qemu(FIRST), qemu(SECOND)
    args = {"targets": [FIRST, SECOND], "verify": True, "verify_engine": "sandbox"}
    first, second = ns.run(ansible.play(args, "first"), ansible.play(args, "second"), env=ansible.env)
    assert first.rc == 0 and second.rc == 0, first.out + second.out
    for name, changed in (("first", True), ("second", False)):
        result = ansible.result(name)
        assert result["changed"] is changed
        report = result["verify"]
        assert report["ok"] and report["engine"] == "sandbox"
        assert {r["target"]: r["machine"] for r in report["results"]} == {
            FIRST: BY_NAME[FIRST].machine, SECOND: BY_NAME[SECOND].machine}
    documented = set(load_module_yaml("RETURN"))
    assert set(ansible.result("first")) - {"failed", "warnings", "diff"} <= documented


def test_a_failing_probe_fails_the_task_with_its_cause(ns, ansible):
    qemu(FIRST)
    run, entry = ns.run(ansible.play({"targets": [FIRST], "flags": "POC", "verify": True, "verify_engine": "sandbox"},
                                     "broken"), f"cat {BINFMT_MISC}/qemu-{FIRST}", env=ansible.env)
    result = ansible.result("broken")
    assert run.rc == 2 and result["failed"] and result["changed"] is True  # registered, but does not work
    assert result["msg"].startswith(f"binfmtd verify: 1 of 1 probes failed: {FIRST}: ")
    assert "lacks the F flag" in result["msg"] and result["verify"]["ok"] is False
    assert "flags: POC\n" in entry.out


# --- the role -----------------------------------------------------------------------------

def role_play(**variables) -> list:
    return [{"hosts": "all", "connection": "local", "gather_facts": False,
             "roles": [{"role": "binfmtd.binfmt.host", "vars": variables}]}]


def test_role_writes_the_config_registers_and_verifies_it(ns, ansible, tmp_path):
    """The role without its apt, pip and systemd parts (they would change the host): the config,
    then the module applying and verifying it."""
    qemu(FIRST), qemu(SECOND)
    config = tmp_path / "etc" / "binfmtd.toml"
    play = role_play(binfmtd_install="none", binfmtd_install_qemu=False, binfmtd_services=[],
                     binfmtd_config_path=str(config), binfmtd_targets=[FIRST, SECOND_PLATFORM],
                     binfmtd_flags="POF", binfmtd_verify_engine="sandbox")
    first, entry, second = ns.run(ansible.command(play, "role", "-v"), f"cat {BINFMT_MISC}/qemu-{FIRST}",
                                  ansible.command(play, "role"), env=ansible.env)
    assert first.rc == 0, first.out + first.err
    written = parse_config(config.read_text(), str(config))
    assert (written.targets, written.flags, written.verify_engine) == ((FIRST, SECOND_PLATFORM), "POF", "sandbox")
    assert "flags: POF\n" in entry.out
    applied = first.out[first.out.index("TASK [binfmtd.binfmt.host : Register the config's emulators"):]
    assert '"engine": "sandbox"' in applied and f'"machine": "{BY_NAME[SECOND].machine}"' in applied  # -v shows it
    assert recap(first.out)["changed"] == 3 and recap(first.out)["failed"] == 0  # dir, config, entries
    assert second.rc == 0 and recap(second.out)["changed"] == 0, second.out


def test_role_installs_binfmtd_from_this_checkout_and_applies_with_it(ns, ansible, tmp_path):
    """The role's default install (binfmtd is not on PyPI): the checkout copied to the host and
    pip-installed into a virtual environment, then used; here under tmp_path, without apt and units."""
    qemu(FIRST)
    prefix, link = tmp_path / "opt" / "binfmtd", tmp_path / "bin" / "binfmtd"
    link.parent.mkdir()
    play = role_play(binfmtd_install_qemu=False, binfmtd_services=[], binfmtd_prefix=str(prefix),
                     binfmtd_link=str(link), binfmtd_path=str(link), binfmtd_config_path=str(tmp_path / "c.toml"),
                     binfmtd_targets=[FIRST], binfmtd_verify_engine="sandbox")
    # A module an upgrade of the checkout removed, still in the host's copy: the next run drops it.
    leftover = prefix / "src" / "binfmtd" / "removed_by_an_upgrade.py"
    first, version, second, _, third = ns.run(
        ansible.command(play, "source", "--skip-tags", "binfmtd_apt"), f"{link} --version",
        ansible.command(play, "source", "--skip-tags", "binfmtd_apt"), f"echo 'raise SystemExit(1)' > {leftover}",
        ansible.command(play, "source", "--skip-tags", "binfmtd_apt"), env={**ansible.env, "PYTHONPATH": ""}, timeout=900)
    assert first.rc == 0, first.out + first.err
    assert version.out.startswith("binfmtd ") and (prefix / "src" / "pyproject.toml").is_file()
    assert os.readlink(link) == str(prefix / "bin" / "binfmtd")
    assert second.rc == 0 and recap(second.out)["changed"] == 0, second.out
    assert third.rc == 0 and recap(third.out)["changed"] > 0, third.out + third.err
    assert not leftover.exists() and not list(prefix.glob("lib/python3*/site-packages/binfmtd/removed_by_an_upgrade.py"))
    assert not (prefix / "src" / "build").exists()


def test_role_keeps_a_config_binfmtd_rejects_off_the_host(ns, ansible, tmp_path):
    config = tmp_path / "etc" / "binfmtd.toml"
    play = role_play(binfmtd_install="none", binfmtd_install_qemu=False, binfmtd_services=[],
                     binfmtd_config_path=str(config), binfmtd_flags="XYZ")
    run, = ns.run(ansible.command(play, "role"), env=ansible.env)
    assert run.rc == 2 and "failed to validate" in run.out, run.out
    assert not config.exists()


def test_role_argument_spec_rejects_bad_variables(ansible):
    """The role's meta/argument_specs.yml, checked by Ansible itself (only the validation task
    runs: it is tagged `always` and no other task has the tag asked for)."""
    good = ansible.command(role_play(binfmtd_targets=["linux/arm64"], binfmtd_services=["binfmtd-daemon.service"]),
                           "good", "--tags", "binfmtd_nothing")
    bad = ansible.command(role_play(binfmtd_install="apt", binfmtd_services=["docker.service"], binfmtd_verify="yes"),
                          "bad", "--tags", "binfmtd_nothing")
    accepted = ansible.run(*shlex.split(good))
    rejected = ansible.run(*shlex.split(bad))
    assert accepted.returncode == 0, accepted.stdout
    assert rejected.returncode == 2 and "Validation of arguments failed" in rejected.stdout
    assert "binfmtd_install must be one of: source, deb, pip, none, got: apt" in rejected.stdout
    assert "binfmtd_services must be one or more of: binfmtd.service, binfmtd-daemon.service" in rejected.stdout


def test_role_defaults_are_its_documented_defaults():
    import yaml

    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    spec = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert set(defaults) == set(spec)
    assert {name: defaults[name] for name in spec} == {name: option["default"] for name, option in spec.items()}


def test_example_playbook_passes_syntax_check(ansible):
    run = ansible.run(ANSIBLE_PLAYBOOK, "-i", "localhost,", "--syntax-check", "binfmtd.binfmt.build_host")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "build_host.yml" in run.stdout


# --- offline sanity checks ----------------------------------------------------------------

def load_module_yaml(name: str):
    import yaml

    return yaml.safe_load(getattr(load_module(), name))


def test_module_imports_and_its_argument_spec_is_its_documentation():
    module = load_module()
    assert callable(module.main)
    documented = load_module_yaml("DOCUMENTATION")["options"]

    def normal(option: dict) -> dict:
        return {"type": option.get("type", "str"), "default": option.get("default"),
                "choices": option.get("choices"), "elements": option.get("elements"),
                "required": option.get("required", False)}

    assert {name: normal(o) for name, o in documented.items()} == \
           {name: normal(o) for name, o in module.ARGUMENT_SPEC.items()}
    assert all(o["description"] for o in documented.values())


def test_the_engine_choices_are_binfmtds_engines():
    """The module runs on the managed host, where binfmtd may be missing, so it cannot import
    binfmtd's engine list: its choices, their documentation and the role's repeat it and must agree."""
    import yaml

    from binfmtd.config import ENGINES

    role = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert load_module().ARGUMENT_SPEC["verify_engine"]["choices"] == list(ENGINES)
    assert load_module_yaml("DOCUMENTATION")["options"]["verify_engine"]["choices"] == list(ENGINES)
    assert role["binfmtd_verify_engine"]["choices"] == list(ENGINES)


def test_examples_use_only_documented_options():
    options = set(load_module_yaml("DOCUMENTATION")["options"])
    examples = load_module_yaml("EXAMPLES")
    assert examples and all(set(task["binfmtd.binfmt.binfmt"]) <= options for task in examples)


def test_ansible_doc_renders_the_module_and_the_role(ansible):
    module = ansible.run(ANSIBLE_DOC, "-t", "module", "binfmtd.binfmt.binfmt")
    assert module.returncode == 0, module.stderr
    assert module.stdout.startswith("> MODULE binfmtd.binfmt.binfmt") and "binfmtd apply --json" in module.stdout
    for section in ("OPTIONS", "ATTRIBUTES", "REQUIREMENTS", "EXAMPLES", "RETURN VALUES"):
        assert section in module.stdout
    as_json = json.loads(ansible.run(ANSIBLE_DOC, "--json", "-t", "module", "binfmtd.binfmt.binfmt").stdout)
    doc = as_json["binfmtd.binfmt.binfmt"]
    assert set(doc["doc"]["options"]) == set(load_module().ARGUMENT_SPEC)
    assert set(doc["return"]) == {"changed", "results", "errors", "verify"}
    role = ansible.run(ANSIBLE_DOC, "-t", "role", "binfmtd.binfmt.host")
    assert role.returncode == 0 and "binfmtd_targets" in role.stdout, role.stderr
