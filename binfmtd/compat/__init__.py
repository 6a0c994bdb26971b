"""The container image's command line: binfmtd's own commands, and the languages of the two images
it replaces, chosen by the first argument (`python3 -m binfmtd.compat ARGS`, the image's entrypoint,
binfmtd.compat.__main__):

- tonistiigi/binfmt (what docker/setup-qemu-action drives): no arguments, `--install`,
  `--uninstall`, `--version`, `--mount` (Go's flag syntax: one or two dashes, `=` or a space).
  Status JSON on stdout, `installing: arm64 OK` logs on stderr; see cmd/binfmt/main.go there.
- multiarch/qemu-user-static (its `register` script, QEMU's qemu-binfmt-conf.sh): `--reset`,
  `-p|--persistent yes|no`, `-c|--credential yes|no`, `-g|--preserve-argv0 yes|no`.
- anything else: binfmtd's own CLI (`apply`, `status`, `daemon`, ...).

Both foreign languages keep binfmtd's guarantees, which those images lack: a platform is reported
supported only after a probe ran on it (binfmtd.verify's sandbox), any failure exits non-zero,
and an entry another tool registered is never replaced unless the user asked for its removal
(`--uninstall qemu-*`, `--reset`); where it is kept, the probe says whether it does the job.
tonistiigi.py and multiarch.py speak each language; run.py holds what both do.
"""
