"""One error type for everything the user can fix.

The CLI prints a HarnessError as a single line (`harness: error: ...`) and exits 2;
the message should name the problem and the fix.
"""


class HarnessError(Exception):
    pass
