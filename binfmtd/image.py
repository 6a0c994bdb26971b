"""Who registered an entry when no state says so: binfmtd's container image.

A container run without binfmtd's state volume forgets what it registered as soon as it exits.
So the image keeps its emulators in a directory that only binfmtd's image uses, and the entries
it registers name them there; with the F flag the kernel keeps the file it opened, and the entry
still shows that path on the host, where nothing else lives. An entry whose interpreter is in
that directory was registered by binfmtd (by its image), whoever runs next: `binfmtd remove` on
the host, the next container run, or binfmtd's apply replacing it with the host's emulator.
Kept tiny and import-free: the state's ownership check (on the boot path) calls it."""

from __future__ import annotations

# The image's emulators: qemu-<target>-static, moved here from /usr/bin by the Containerfile.
EMULATOR_DIR = "/usr/libexec/binfmtd-image"


def registered_by_image(interpreter: str) -> bool:
    """Whether an entry with this interpreter was registered by binfmtd's container image."""
    return interpreter.startswith(EMULATOR_DIR + "/") and "/" not in interpreter[len(EMULATOR_DIR) + 1:]
