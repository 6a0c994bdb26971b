"""The public commands, the API the CLI, the daemon and the image call: `change` (apply, remove),
`status` (status, targets), `check`, `ps`, `export`. Each returns a report (binfmtd.report) that
becomes text or JSON only at the edge (binfmtd.cli.render). Callers import the module they need:
the boot path's `apply` loads neither check nor status."""
