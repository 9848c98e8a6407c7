"""The one exception type for user mistakes.

Anything raised as `UserError` reaches the user as a single line and exit status 2;
every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in user input (a file, a flag, a recipe). The message names the field."""
