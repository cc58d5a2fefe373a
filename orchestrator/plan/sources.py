"""Source references: the one parser of a transfer spec's `source` text.

`scratch`, or `<scheme>:<name>` with a scheme of the catalog (workers.catalog.SOURCE_SCHEMES):
`spec:<spec_hash>` (a source trial of the same grid), `file:<name>`, `torchvision:<arch>`,
`robustness:<name>`. str(SourceRef.parse(text)) == text for every valid text, so a spec's
canonical JSON (and its hash) never depends on the parse.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.trainable import SCRATCH, SOURCE_SCHEMES, catalog

__all__ = ["SCRATCH", "SOURCE_SCHEMES", "SourceRef"]


@dataclass(frozen=True)
class SourceRef:
    scheme: str  # a SOURCE_SCHEMES key, or "scratch" (then name is "")
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> SourceRef:
        """The reference `text` names; a CatalogError (a ValueError) for an unknown scheme or an empty name."""
        if text == SCRATCH:
            return cls(SCRATCH)
        scheme, colon, name = text.partition(":")
        if not colon:
            raise catalog.CatalogError(
                f"source {text!r} is not scratch nor <scheme>:<name> "
                f"(schemes: {', '.join(f'{s}:' for s in SOURCE_SCHEMES)})")
        try:
            catalog.check_source_scheme(scheme)
        except catalog.CatalogError as exc:
            raise catalog.CatalogError(f"source {text!r}: {exc}") from None
        if not name:
            raise catalog.CatalogError(f"source {text!r} names nothing after '{scheme}:'")
        return cls(scheme, name)

    @classmethod
    def maybe(cls, text: object) -> SourceRef | None:
        """parse(text), or None for None / NaN (source trials' rows) and for text that does not parse."""
        if not isinstance(text, str):
            return None
        try:
            return cls.parse(text)
        except ValueError:
            return None

    @property
    def is_scratch(self) -> bool:
        return self.scheme == SCRATCH

    def __str__(self) -> str:
        return SCRATCH if self.is_scratch else f"{self.scheme}:{self.name}"
