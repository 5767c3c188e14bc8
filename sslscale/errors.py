"""The one exception type users see: a problem with their input, said in one line with its fix."""


class SslscaleError(Exception):
    """A user-facing error: the message names the problem and how to fix it, in one line."""
