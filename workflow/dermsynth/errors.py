"""Errors that carry one human-readable line: the scripts print them and exit non-zero."""


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
