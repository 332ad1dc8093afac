"""The one exception type for bad input.

Every CLI catches `EvalkitError` and prints its message as a single line, then exits
with code 2. The message names the file or flag at fault and what to do about it, so a
user never has to read a traceback to fix their command line.
"""


class EvalkitError(Exception):
    """Bad input from the user: a file, a flag or a value. The message says the fix."""


EXIT_BAD_INPUT = 2
