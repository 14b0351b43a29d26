"""Errors that carry one human-readable line: the scripts print them and exit non-zero."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (cut at ``limit``), for a warning that names a failure
    whose full text (a compiler's traceback) would bury it."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:limit] if lines else ''}".rstrip(": ")


class DermsynthError(Exception):
    """Base class: the message is one line that tells the user what is wrong and what to do."""


class ConfigError(DermsynthError):
    """A config value is missing or outside its allowed values."""


class ImageError(DermsynthError):
    """An image file cannot be read or has an unsupported format."""


class ModelNotFoundError(DermsynthError):
    """A model is neither a local directory nor in the Hugging Face cache, and the hub is unreachable."""


class DataSourceError(DermsynthError):
    """A dataset source (isic-cli, a folder, a CSV) cannot deliver the images asked for."""


class TrainingError(DermsynthError):
    """Training diverged (NaN/inf loss) or cannot start."""
