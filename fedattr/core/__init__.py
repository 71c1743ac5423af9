"""Helpers every other package uses and that use none: errors, the registry, file I/O."""
