"""Error types. The library raises these; only the CLI prints them."""


class EdgekitError(Exception):
    """Base class: a problem the user can fix, with a message saying what would be valid."""


class UsageError(EdgekitError):
    """An option or argument is out of range or inconsistent."""


class CheckpointError(EdgekitError):
    """A checkpoint is missing, unreadable, unsafe or not understood."""


class ModelFileError(EdgekitError):
    """An .onnx file is missing, corrupt, or lacks edgekit metadata."""


class DataError(EdgekitError):
    """Training data is missing, empty or unreadable."""


class ExportError(EdgekitError):
    """An export step failed or broke its verification budget."""


class TokenizerError(EdgekitError):
    """A tokenizer cannot be built or cannot encode the input."""
