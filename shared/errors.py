"""The one exception root of the project, sorted by what the caller should do about it."""


class PressroomError(Exception):
    """Base of every error Pressroom raises on purpose."""


class ConfigError(PressroomError):
    """The environment describes a configuration that cannot work; start-up must stop."""


class TransientError(PressroomError):
    """A dependency is briefly unavailable: retry with backoff, a bounded number of times."""


class PermanentError(PressroomError):
    """Retrying cannot help: record the reason (dead letters) and move on."""


class InvalidTransition(PressroomError):
    """An article cannot move from its current status to the one asked for."""

    def __init__(self, current: str, wanted: str):
        super().__init__(f"an article that is {current} cannot become {wanted}")
        self.current = current
        self.wanted = wanted


class Conflict(PressroomError):
    """The request clashes with what is stored (a taken slug, a stale version)."""

    def __init__(self, message: str, code: str = "conflict"):
        super().__init__(message)
        self.code = code
