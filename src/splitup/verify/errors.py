"""Errors of the verification layer: bad game parameters, malformed fingerprints, uncommittable outputs."""

from __future__ import annotations

from splitup.errors import SplitUpError


class VerifyError(SplitUpError):
    """Base class for errors raised by ``splitup.verify``."""


class BadGameParameters(VerifyError):
    """A PoSP game parameter is outside its meaningful range (negative cost, r >= 1, ...)."""


class BadFingerprint(VerifyError):
    """Fingerprint bytes that do not parse, or a fingerprint request that cannot be honoured."""


class BadCommitmentInput(VerifyError):
    """Outputs or salt that have no canonical serialization (object dtype, short salt, ...)."""


class BadSamplingInput(VerifyError):
    """A sampling seed or rate outside the rule the chain program implements."""
