"""Error types that the CLI turns into one-line messages and exit codes.

Library code raises these with a message that names the problem and says what
to do; it never prints. The CLI catches GotraceError at its boundary.
"""


class GotraceError(Exception):
    """Base class: a problem the user can fix. `exit_code` follows the CLI contract."""

    exit_code = 2


class UsageError(GotraceError):
    """Bad arguments or options (exit 2)."""


class BinaryError(GotraceError):
    """The target file is missing, not ELF, not Go, truncated or unsupported (exit 2)."""


class PatternError(GotraceError):
    """A pattern matched no function (exit 2)."""


class CapabilityError(GotraceError):
    """The machine cannot trace: not root, no BPF, no uprobes, no kernel headers (exit 3)."""

    exit_code = 3
