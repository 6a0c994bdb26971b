"""binfmtd: register QEMU user-mode emulators with binfmt_misc, verify and keep them."""

__version__ = "0.1.0"
