#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: binfmtd contributors
# MIT License (see the binfmtd repository)
"""binfmtd.binfmt.binfmt: a thin client of binfmtd's --json command line. Every decision
(what to register, what changed, what failed) is binfmtd's; this module runs it, passes its
messages on, and turns its JSON into the task's result."""

from __future__ import annotations

DOCUMENTATION = r"""
module: binfmt
short_description: Register QEMU user-mode emulators with binfmt_misc using binfmtd
version_added: "0.1.0"
description:
  - Registers (O(state=present)) or removes (O(state=absent)) the binfmt_misc entries C(qemu-<target>)
    that let this host run foreign-architecture programs, for example for
    C(docker buildx build --platform linux/arm64).
  - Runs C(binfmtd apply --json) or C(binfmtd remove --json) on the managed host. C(changed) is
    binfmtd's own, from comparing the kernel's table with the desired entries, so a second run
    reports no change.
  - binfmtd never replaces or removes an entry another tool registered (binfmt-support,
    systemd-binfmt, tonistiigi/binfmt) unless O(force=true); an entry it took over is put back
    when it is removed.
  - Native targets are skipped, and with no O(targets) every target the host cannot run natively
    is registered, unless the config file names the targets.
author:
  - binfmtd contributors (!UNKNOWN)
requirements:
  - binfmtd on the managed host (the C(binfmtd.binfmt.host) role, C(scripts/install) or
    C(pip install binfmtd) installs it)
  - The QEMU user-mode emulators (Debian's C(qemu-user-static))
  - Linux 4.8 or newer with binfmt_misc, and root (C(become=true))
options:
  targets:
    description:
      - QEMU targets (V(aarch64), V(arm), V(riscv64), V(s390x), ...) or container platforms
        (V(linux/arm64), V(linux/arm/v7), V(arm64), ...); C(binfmtd targets) lists them all.
      - V(all) is every known target (native ones are skipped).
      - When omitted, O(state=present) uses the targets of the config file (O(config)), else every
        target the host cannot run natively; O(state=absent) needs targets (or V(all)).
    type: list
    elements: str
  state:
    description:
      - V(present) registers the entries (and repairs disabled or different ones).
      - V(absent) removes the entries binfmtd registered (others' only with O(force=true)).
    type: str
    choices: [present, absent]
    default: present
  flags:
    description:
      - binfmt_misc flags for the entries, from V(P), V(O), V(C), V(F).
      - When omitted, the config file's C(flags), else V(POCF).
      - Ignored when O(state=absent).
    type: str
  force:
    description:
      - Take over (O(state=present)) or remove (O(state=absent)) C(qemu-<target>) entries that
        another tool registered.
    type: bool
    default: false
  verify:
    description:
      - After applying, run C(binfmtd verify) for every target that has its entry (changed or
        not) and fail the task if a probe does not run, naming its cause and fix.
      - Only with O(state=present); not in check mode.
    type: bool
    default: false
  verify_engine:
    description:
      - Where O(verify) runs its probes; C(sandbox) needs no container engine.
      - When omitted, the config file's C([verify] engine), else V(auto).
    type: str
    choices: [auto, sandbox, docker, podman, nerdctl]
  config:
    description:
      - binfmtd's config file (TOML), passed as C(--config) to C(apply) and C(verify).
      - When omitted, C($BINFMTD_CONFIG), else C(/etc/binfmtd/binfmtd.toml) when it exists.
      - Ignored when O(state=absent).
    type: path
  binfmtd_path:
    description:
      - The C(binfmtd) executable.
      - When omitted, C(binfmtd) is looked up on E(PATH), in C(/usr/local/bin) and in C(/usr/bin).
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Runs C(binfmtd apply --check) or C(binfmtd remove --check), which plan and change nothing.
  diff_mode:
    support: full
    details: Before and after are the C(qemu-*) and other entries of C(binfmtd status); in check mode, after is
      predicted from binfmtd's plan.
  platform:
    platforms: posix
notes:
  - binfmt_misc tables belong to user namespaces since Linux 6.7; in a container with its own user
    namespace the entries registered are that namespace's, not the host's.
seealso:
  - name: binfmt_misc
    description: The kernel's documentation of binfmt_misc.
    link: https://docs.kernel.org/admin-guide/binfmt-misc.html
"""

EXAMPLES = r"""
- name: Register the emulators for arm64 and arm/v7 container builds
  binfmtd.binfmt.binfmt:
    targets: [linux/arm64, linux/arm/v7]
  become: true

- name: Register every foreign target and prove each one runs
  binfmtd.binfmt.binfmt:
    targets: all
    verify: true
    verify_engine: sandbox
  become: true

- name: Apply /etc/binfmtd/binfmtd.toml, without the C flag
  binfmtd.binfmt.binfmt:
    flags: POF
  become: true

- name: Take over the entries binfmt-support registered
  binfmtd.binfmt.binfmt:
    targets: [aarch64, riscv64]
    force: true
  become: true

- name: Remove the riscv64 entry
  binfmtd.binfmt.binfmt:
    targets: [riscv64]
    state: absent
  become: true
"""

RETURN = r"""
changed:
  description: binfmtd's C(changed), true when an entry was (or, in check mode, would be) registered, replaced
    or removed, or binfmt_misc mounted.
  returned: always
  type: bool
  sample: true
results:
  description: What binfmtd did, or in check mode would do, for each target.
  returned: when binfmtd ran
  type: list
  elements: dict
  contains:
    target:
      description: The QEMU target.
      type: str
      sample: aarch64
    platform:
      description: Its container platform, if it has one.
      type: str
      sample: linux/arm64
    name:
      description: The binfmt_misc entry.
      type: str
      sample: qemu-aarch64
    action:
      description: One of V(registered), V(replaced), V(removed), V(unchanged), V(skipped).
      type: str
      sample: registered
    reason:
      description: Why.
      type: str
      sample: not registered
    interpreter:
      description: The emulator the entry hands binaries to.
      type: str
      sample: /usr/bin/qemu-aarch64-static
    flags:
      description: The entry's binfmt_misc flags.
      type: str
      sample: POCF
  sample:
    - target: aarch64
      platform: linux/arm64
      name: qemu-aarch64
      action: registered
      reason: not registered
      interpreter: /usr/bin/qemu-aarch64-static
      flags: POCF
errors:
  description: The targets binfmtd could not handle, each with its message; the task fails when there are any.
  returned: when binfmtd ran
  type: list
  elements: dict
  contains:
    target:
      description: The QEMU target.
      type: str
    message:
      description: What went wrong and how to fix it.
      type: str
  sample: []
verify:
  description: The report of C(binfmtd verify --json).
  returned: when O(verify=true), O(state=present), not in check mode, and some target has its entry
  type: dict
  contains:
    ok:
      description: Whether every probe ran and reported the expected machine.
      type: bool
    engine:
      description: Where the probes ran.
      type: str
      sample: sandbox
    results:
      description: One per target, with C(target), C(platform), C(ok), C(machine), C(seconds), C(error)
        (and C(cause) and C(fix) for a failure).
      type: list
      elements: dict
  sample:
    ok: true
    engine: sandbox
    results:
      - target: aarch64
        platform: linux/arm64
        ok: true
        machine: aarch64
        seconds: 0.04
        error: null
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = dict(
    targets=dict(type="list", elements="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    flags=dict(type="str"),
    force=dict(type="bool", default=False),
    verify=dict(type="bool", default=False),
    verify_engine=dict(type="str", choices=["auto", "sandbox", "docker", "podman", "nerdctl"]),
    config=dict(type="path"),
    binfmtd_path=dict(type="path"),
)

SEARCH_DIRS = ["/usr/local/bin", "/usr/bin"]
INSTALL_HINT = ("install it on the managed host (the binfmtd.binfmt.host role, `scripts/install` from binfmtd's "
                "repository, or `pip install binfmtd`) or set binfmtd_path")
# The diff shows these fields of each entry of `binfmtd status --json`: the ones apply and remove decide.
DIFF_FIELDS = ("enabled", "interpreter", "flags", "target", "owner")
EXIT_MEANING = {2: "usage error", 3: "this host cannot do it"}


def find_binfmtd(module):
    path = module.params["binfmtd_path"]
    if path:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            module.fail_json(msg="binfmtd_path %s is not an executable file; %s" % (path, INSTALL_HINT))
        return path
    # PATH first (get_bin_path searches opt_dirs before PATH), then where installs put it.
    found = module.get_bin_path("binfmtd") or module.get_bin_path("binfmtd", opt_dirs=SEARCH_DIRS)
    if not found:
        module.fail_json(msg="binfmtd was not found on PATH, in /usr/local/bin or in /usr/bin; " + INSTALL_HINT)
    return found


def run_binfmtd(module, argv, result):
    """Run one binfmtd command with --json: its report, or fail_json with binfmtd's message.
    binfmtd's warnings (one line each on stderr) become the task's warnings."""
    rc, out, err = module.run_command(argv)
    errors = []
    for line in err.splitlines():
        if line.startswith("binfmtd: warning: "):
            module.warn(line[len("binfmtd: warning: "):])
        elif line.startswith("binfmtd: error: "):
            errors.append(line[len("binfmtd: error: "):])
    command = "binfmtd " + argv[1]
    try:
        report = json.loads(out)
    except ValueError:
        module.fail_json(msg="%s exited with %d and printed no JSON: %s" % (command, rc, err.strip() or out.strip()),
                         rc=rc, cmd=argv, stdout=out, stderr=err, **result)
    if not isinstance(report, dict):
        module.fail_json(msg="%s printed unexpected JSON" % command, rc=rc, cmd=argv, stdout=out, **result)
    # The command as a whole failed (exit 1, 2 or 3): an error without a target (older binfmtd: "error").
    whole = [e["message"] for e in report.get("errors", []) if not e.get("target")]
    if whole or "error" in report:
        meaning = EXIT_MEANING.get(rc, "failed")
        module.fail_json(msg="%s: %s (exit %d: %s)" % (command, "; ".join(whole) or report["error"], rc, meaning),
                         rc=rc, cmd=argv, stderr=err, **result)
    if rc not in (0, 1):
        module.fail_json(msg="%s exited with %d: %s" % (command, rc, "; ".join(errors) or err.strip()),
                         rc=rc, cmd=argv, stdout=out, stderr=err, **result)
    return rc, report


def target_argv(targets):
    if targets and "all" in [t.lower() for t in targets]:
        return ["--all"]
    return list(targets or [])


def diff_entries(status):
    return {e["name"]: dict((k, e.get(k)) for k in DIFF_FIELDS) for e in status["entries"]}


def predict_entries(before, results):
    """The entries after the plan's actions, for check mode's diff."""
    after = dict(before)
    for r in results:
        if r["action"] in ("registered", "replaced"):
            after[r["name"]] = {"enabled": True, "interpreter": r["interpreter"], "flags": r["flags"],
                                "target": r["target"], "owner": "binfmtd"}
        elif r["action"] == "removed":
            after.pop(r["name"], None)
    return after


def describe(errors):
    return "; ".join(e["message"] if e["message"].startswith((e["target"], "qemu-" + e["target"]))
                     else "%s: %s" % (e["target"], e["message"]) for e in errors)


def verify_failures(report):
    lines = []
    for r in report["results"]:
        if not r["ok"]:
            error, cause = r.get("error") or "probe failed", r.get("cause")
            if cause and error in cause:  # the cause quotes the error already (a crash)
                text = "%s: %s" % (r["target"], cause)
            else:
                text = "%s: %s" % (r["target"], error) + ("; cause: %s" % cause if cause else "")
            if r.get("fix"):
                text += "; fix: %s" % r["fix"]
            lines.append(text)
    return lines


def change_argv(binfmtd, p, check):
    """`binfmtd apply` or `binfmtd remove` for the task's options (plain spellings: binfmtd's fast path)."""
    present = p["state"] == "present"
    argv = [binfmtd, "apply" if present else "remove"] + target_argv(p["targets"])
    if present and p["flags"] is not None:
        argv += ["--flags", p["flags"]]
    if present and p["config"]:
        argv += ["--config", p["config"]]
    if p["force"]:
        argv.append("--force")
    if check:
        argv.append("--check")
    return argv + ["--json"]


def verify(module, binfmtd, targets, result):
    """`binfmtd verify` for the targets that have their entry; fails the task if a probe fails."""
    p = module.params
    argv = [binfmtd, "verify"] + targets
    if p["verify_engine"]:
        argv += ["--engine", p["verify_engine"]]
    if p["config"]:
        argv += ["--config", p["config"]]
    rc, report = run_binfmtd(module, argv + ["--json"], result)
    result["verify"] = report
    failures = verify_failures(report)
    if rc != 0 or failures:
        module.fail_json(msg="binfmtd verify: %d of %d probes failed: %s"
                         % (len(failures), len(report["results"]), "; ".join(failures)), rc=rc, **result)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    binfmtd = find_binfmtd(module)
    status = [binfmtd, "status", "--json"]
    result = dict(changed=False)

    if module._diff:
        before = diff_entries(run_binfmtd(module, status, result)[1])
    argv = change_argv(binfmtd, p, module.check_mode)
    rc, report = run_binfmtd(module, argv, result)
    result.update(changed=report["changed"], results=report["results"], errors=report["errors"])
    if module._diff:
        after = (predict_entries(before, report["results"]) if module.check_mode
                 else diff_entries(run_binfmtd(module, status, result)[1]))
        result["diff"] = dict(before=before, after=after)

    if report["errors"]:
        count = len(report["errors"])
        module.fail_json(msg="binfmtd %s: %d target%s failed: %s"
                         % (argv[1], count, "s" if count > 1 else "", describe(report["errors"])), rc=rc, **result)

    in_place = [r["target"] for r in report["results"] if r["action"] != "skipped"]
    if p["verify"] and p["state"] == "present" and not module.check_mode and in_place:
        verify(module, binfmtd, in_place, result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
