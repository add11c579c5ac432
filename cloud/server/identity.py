"""Who a connection may speak for: its client certificate's identity, unless revoked (common/tls.py).

One place checks it for every call that names an edge (a Session's Hello, Infer, GetPolicy): without
TLS there is no identity and nothing to check (a private network, the embedded default); with it, a
revoked certificate is refused, and so is a call naming another edge, or another site when the
certificate names one. Each refusal is counted in bad_messages by its reason (revoked, impostor).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from common.tls import RevocationList, ServerTlsConfig, identity_of


@dataclass(frozen=True)
class Refusal:
    """Why a call is refused: the bad_messages reason and words an operator can act on."""

    reason: str
    message: str


@dataclass
class IdentityCheck:
    """The server's rule for identities; `revoked` is the deny list (None: nothing is revoked)."""

    revoked: RevocationList | None = None

    def refusal(
        self, auth_context: Mapping[str, Iterable[bytes]], edge_id: str, site_id: str | None = None
    ) -> Refusal | None:
        """None when the peer may speak for `edge_id` (and `site_id`, when given); else why not."""
        identity = identity_of(auth_context)
        if identity is None:
            return None
        if self.revoked is not None and self.revoked.revoked(identity.serial):
            return Refusal(
                "revoked", f"the certificate of edge {identity.edge_id!r} (serial {identity.serial:x}) is revoked"
            )
        if edge_id != identity.edge_id:
            return Refusal(
                "impostor",
                f"this connection's certificate belongs to edge {identity.edge_id!r}; it cannot speak for {edge_id!r}",
            )
        if site_id is not None and identity.site_id is not None and site_id != identity.site_id:
            return Refusal(
                "impostor",
                f"this connection's certificate puts edge {edge_id!r} in site {identity.site_id!r}, not {site_id!r}",
            )
        return None


def revocation_list(tls: ServerTlsConfig | None) -> RevocationList | None:
    """The deny list a server's TLS settings name, if any."""
    return None if tls is None or tls.revoked_file is None else RevocationList(tls.revoked_file)
