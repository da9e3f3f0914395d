"""User-facing errors: each carries one line that says what is wrong and what to do."""


class VcamError(Exception):
    """An error caused by input or environment, reported to the user in one line."""

    def __str__(self) -> str:  # keep it on one line whatever the cause text holds
        return " ".join(super().__str__().split())


class ConfigError(VcamError):
    """config.yaml is invalid; the message names the field path and the bad value."""


class AvatarError(VcamError):
    """The avatar image cannot be used (unreadable, no face, ...)."""


class AudioError(VcamError):
    """Audio input is unusable (missing device, wrong rate, unreadable file, ...)."""


class CheckpointError(VcamError):
    """A model checkpoint is missing, corrupt or does not match the expected layout."""


class DeviceError(VcamError):
    """An audio or video device is missing or failed."""


class EngineError(VcamError):
    """An engine cannot run as configured (missing weights, unsupported device or option)."""
