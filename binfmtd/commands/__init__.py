"""The public commands, the API the CLI, the daemon, the Ansible module's CLI calls and the image
use: each returns a report (binfmtd.report) that becomes text or JSON only at the edge
(binfmtd.cli.render). `change` (apply, remove), `status` (status, targets), `check`, `export`."""

from binfmtd.commands.change import ChangeReport, apply, remove
from binfmtd.commands.check import CheckReport, check
from binfmtd.commands.status import StatusReport, TargetsReport, list_targets, status

__all__ = ["ChangeReport", "CheckReport", "StatusReport", "TargetsReport", "apply", "check", "list_targets",
           "remove", "status"]
