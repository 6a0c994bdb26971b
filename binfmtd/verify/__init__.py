"""Verification: foreign-architecture probes run through the kernel's entries, in a private
sandbox or in containers (the engines' names are settings: binfmtd.config.ENGINES)."""


def spoken(names: tuple[str, ...]) -> str:
    """`a, b or c`: a list of names as a message says it."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)
