"""Verification: foreign-architecture probes run through the kernel's entries, in a private
sandbox or in containers."""
