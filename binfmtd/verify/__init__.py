"""Verification: foreign-architecture probes run through the kernel's entries, in a private
sandbox or in containers.

The engine names live here, the package's module that imports nothing: the config file (read on
the boot path), the CLI and the engines themselves check names against this one list."""

CONTAINER_ENGINES = ("docker", "podman", "nerdctl")
ENGINES = ("auto", "sandbox", *CONTAINER_ENGINES)  # auto: the first container engine that answers, else sandbox


def spoken(names: tuple[str, ...]) -> str:
    """`a, b or c`: a list of names as a message says it."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)
