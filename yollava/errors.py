"""User-facing errors: one line that names the problem and the fix."""


class YollavaError(Exception):
    """A mistake in the user's input or environment.

    The CLI prints ``error: <message>`` on one line and exits with code 2, without a
    traceback. Library code raises it for anything a user can fix (bad paths, bad
    names, mismatched artifacts); programming errors stay ordinary exceptions.
    """
