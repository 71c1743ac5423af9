"""Errors a user can cause: the CLI prints their message and exits with status 2."""


class UserError(Exception):
    """A problem with the user's input or environment, stated in one clear message."""


class DatasetUnavailableError(UserError):
    """A torchvision dataset is missing from its data directory and cannot be downloaded."""


class DamagedResultsError(UserError):
    """A results file that is truncated or does not validate; the message names it and the fix."""
