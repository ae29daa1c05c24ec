"""vsr_fast: fast BasicVSR / IconVSR (placeholder until the extension build lands)."""
from . import reference  # noqa: F401
