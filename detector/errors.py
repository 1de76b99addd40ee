"""Errors a user can act on: they carry one plain sentence and are shown without a traceback."""


class UserError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""
