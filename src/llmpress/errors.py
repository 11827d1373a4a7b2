"""One exception hierarchy. The CLI maps it to exit codes and one line; the server to HTTP + OpenAI JSON."""

from __future__ import annotations


class LlmpressError(Exception):
    """Base of every error a user can cause. `fix` says what to do about it."""

    exit_code = 1
    http_status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, fix: str | None = None, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.param = param

    def one_line(self) -> str:
        return f"{self.message} — {self.fix}" if self.fix else self.message


class NotFoundError(LlmpressError):
    """A path, artifact id, built-in or model name that does not exist."""

    exit_code = 2
    http_status = 404
    error_type = "not_found_error"


class ManifestError(LlmpressError):
    """An artifact whose llmpress.json is missing, unreadable or inconsistent with its files."""

    exit_code = 3


class IntegrityError(ManifestError):
    """A file whose sha256 differs from the one the manifest recorded."""


class SourceError(LlmpressError):
    """A model source that cannot be loaded (unsupported architecture, missing tokenizer...)."""

    exit_code = 4


class OfflineError(SourceError):
    """A hub id asked for on a machine that cannot reach the hub."""


class DataError(LlmpressError):
    """A corpus or data file that is empty, malformed or too small for the job."""

    exit_code = 5


class ConfigError(LlmpressError):
    """A step config with a bad value (unknown scheme, amount out of range...)."""

    exit_code = 6
    http_status = 422


class RegistryError(LlmpressError):
    """A registry operation refused (e.g. removing an artifact that still has children)."""

    exit_code = 7
    http_status = 409


# -- serving: raised by the engine, the key store and the rate limiter, answered over HTTP --------
class AuthError(LlmpressError):
    """Missing, unknown, revoked or expired API key."""

    exit_code = 8
    http_status = 401
    error_type = "authentication_error"


class PermissionDeniedError(LlmpressError):
    """A valid key without the scope an endpoint needs, or with its token budget spent."""

    exit_code = 8
    http_status = 403
    error_type = "permission_error"


class OverloadedError(LlmpressError):
    """The bounded request queue is full: the server answers 429/503 with Retry-After."""

    http_status = 503
    error_type = "overloaded_error"


class EngineFaultError(LlmpressError):
    """The model failed on a request (a server fault, not the client's): 500 server_error."""

    exit_code = 9
    http_status = 500
    error_type = "server_error"


class EngineUnhealthyError(OverloadedError):
    """The engine failed step after step and refuses new work until restarted: 503."""

    error_type = "server_error"


class RateLimitError(LlmpressError):
    """A per-key request or token rate, or the token budget, is exceeded; `retry_after` seconds."""

    http_status = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, fix: str | None = None, *, retry_after: float = 1.0,
                 param: str | None = None) -> None:
        super().__init__(message, fix, param=param)
        self.retry_after = retry_after
