"""The seed's two claims ("AWQ keeps 89 % of the original accuracy at a quarter of the memory", "GPTQ 4-bit is 2.3x
faster"), measured on a customer's model from its variants' rows (deployments/quality/variants.py) where the variant
each speaks of exists; otherwise what it would take to measure them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.utils.translation import gettext as _

if TYPE_CHECKING:
    from deployments.models import ModelArtifact
    from deployments.quality.variants import Variant

# The seed's claims (README of the seed project), each measured where the variant it speaks of exists.
AWQ_SCHEME, GPTQ_SCHEME = "W4A16_AWQ", "W4A16_GPTQ"
AWQ_ACCURACY_CLAIM, AWQ_MEMORY_CLAIM, GPTQ_SPEED_CLAIM = 0.89, 0.25, 2.3


@dataclass
class Claim:
    """A claim of the seed beside what was measured on this model: `measured` the ratio(s), or `missing` what it
    would take to measure it."""

    claim: str
    scheme: str
    artifact: int | None = None
    measured: dict[str, float] = field(default_factory=dict)
    claimed: dict[str, float] = field(default_factory=dict)
    detail: str = ""
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- measuring them ------------------------------------------------------------------------------------------------
def seed_claims(base: ModelArtifact, variants: list[Variant], base_weight: int | None) -> list[Claim]:
    """One row per AWQ and GPTQ variant made from the base itself (a quantized fine-tune would mix two changes), or
    one row saying what is missing."""
    direct = [v for v in variants if v.parent.pk == base.pk]
    claims = [_awq_claim(v, base_weight) for v in direct if v.scheme == AWQ_SCHEME] or [_absent(AWQ_SCHEME)]
    claims += [_gptq_claim(v) for v in direct if v.scheme == GPTQ_SCHEME] or [_absent(GPTQ_SCHEME)]
    return claims


def _awq_text() -> str:
    # xgettext:no-python-format
    return _("AWQ keeps 89 % of the original accuracy at a quarter of the memory")


def _gptq_text() -> str:
    return _("GPTQ 4-bit is 2.3x faster")


def _absent(scheme: str) -> Claim:
    text = _awq_text() if scheme == AWQ_SCHEME else _gptq_text()
    return Claim(text, scheme, missing=[_("a %(scheme)s variant of this model") % {"scheme": scheme}])


def _awq_claim(variant: Variant, base_weight: int | None) -> Claim:
    claim = Claim(_awq_text(), AWQ_SCHEME, variant.artifact.pk)
    claim.claimed = {"accuracy_ratio": AWQ_ACCURACY_CLAIM, "memory_ratio": AWQ_MEMORY_CLAIM}
    accuracy = variant.accuracy
    if accuracy.value is not None and accuracy.base:
        claim.measured["accuracy_ratio"] = accuracy.value / accuracy.base
        claim.detail = accuracy.note
    else:
        claim.missing.append(_("the accuracy of the base and of the variant on the same task data"))
    if variant.weight_bytes and base_weight:
        claim.measured["memory_ratio"] = variant.weight_bytes / base_weight
    else:
        claim.missing.append(_("the weight memory of both (their config.json readable by the console)"))
    return claim


def _gptq_claim(variant: Variant) -> Claim:
    claim = Claim(_gptq_text(), GPTQ_SCHEME, variant.artifact.pk)
    claim.claimed = {"speedup": GPTQ_SPEED_CLAIM}
    tokens = variant.tokens_per_s
    if tokens.value is not None and tokens.base:
        claim.measured["speedup"] = tokens.value / tokens.base
        claim.detail = _("output tokens/s at %(level)s") % {"level": variant.benchmark.get("level", "")}
    else:
        claim.missing.append(
            _("a finished benchmark of a deployment of the base and of the variant, same workload, a common level")
        )
    return claim
