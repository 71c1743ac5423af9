"""Errors a user can cause: the CLI prints their message and exits with status 2."""


class UserError(Exception):
    """A problem with the user's input or environment, stated in one clear message."""


class DatasetUnavailableError(UserError):
    """A torchvision dataset is missing from its data directory and cannot be downloaded."""


class DamagedResultsError(UserError):
    """A results file that is truncated or does not validate; the message names it and the fix."""


class RunFailedError(UserError):
    """A run that started on valid input but did not finish; the CLI exits with status 1, not 2."""


class NoSpaceError(RunFailedError):
    """A write failed because its file system is full; the message names the path."""
