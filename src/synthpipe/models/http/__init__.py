"""The shared HTTP transport vocabulary of the model backends: retries and backoff, the error of
a request that failed for good, redaction of secrets."""

from synthpipe.models.http.redaction import SENSITIVE_HEADERS, redact, safe_url
from synthpipe.models.http.retry import (
    OVERLOAD_STATUSES,
    RETRYABLE_STATUSES,
    RequestFailed,
    RetryPolicy,
    call_with_retries,
    parse_retry_after,
)

__all__ = ["OVERLOAD_STATUSES", "RETRYABLE_STATUSES", "SENSITIVE_HEADERS", "RequestFailed", "RetryPolicy",
           "call_with_retries", "parse_retry_after", "redact", "safe_url"]
