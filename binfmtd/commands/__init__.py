"""The public commands, the API the CLI, the daemon, the Ansible module and the image call: each
returns a report that becomes text or JSON only at the edge (binfmtd.cli.render)."""

from binfmtd.commands.change import ChangeReport, apply, check, list_targets, remove, status

__all__ = ["ChangeReport", "apply", "check", "list_targets", "remove", "status"]
