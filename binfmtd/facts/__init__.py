"""Facts: what the host is, read and never changed. `host` (kernel, the binfmt_misc table, the
host's architecture), `native` (which targets it runs itself), `interpreters` (the emulators on
disk and whether they are safe), `processes` (who runs under emulation now)."""
