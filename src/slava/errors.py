"""Errors that the CLI reports as one clear line instead of a traceback."""


class SlavaError(Exception):
    """Base of every error meant for the user: bad input, bad config, refused request."""
