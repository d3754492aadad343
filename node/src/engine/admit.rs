//! Who may take bytes from an engine (claims 5, 23, 24, 25): a console presenting a console
//! token for the program, an engine presenting an engine token for it and approved by this
//! engine's director. Checked before any stream or copy slot is taken; the decisions are pure
//! (the caller passes the clock), their refusals one line for the other side.

use libp2p::PeerId;
use vodmesh_proto::ProgramId;
use vodmesh_proto::token::{Audience, TokenError, TrustedIssuers};

/// Why a stream or a copy is refused. The `Display` text goes back to the other side.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// This station trusts no issuer, so no token can pass.
    #[error("this station trusts no token issuer and serves no {0}")]
    NoIssuer(&'static str),
    /// A console without a token.
    #[error("no token: log in first (vodmesh-console login)")]
    NoConsoleToken,
    /// An engine without an engine token.
    #[error("no engine token: enroll the station first (vodmesh enroll)")]
    NoEngineToken,
    /// The token does not pass.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A token that passes, from an engine its director did not (or no longer) approve.
    #[error("not an engine of a live station known to this station")]
    NotApproved,
    /// The program's publish time has not come ([`super::embargo`]).
    #[error("{}", crate::director::NOT_PUBLISHED)]
    NotPublished,
}

/// Whether `peer` may stream `program` from this engine, presenting `token`.
pub(crate) fn stream(
    trusted: &TrustedIssuers,
    token: Option<&[u8]>,
    program: &ProgramId,
    peer: &PeerId,
    now_ms: u64,
) -> Result<(), Refusal> {
    if trusted.is_empty() {
        return Err(Refusal::NoIssuer("stream"));
    }
    let token = token.ok_or(Refusal::NoConsoleToken)?;
    trusted.verify(token, now_ms, Audience::Console, Some(program), peer)?;
    Ok(())
}

/// Whether a stream of a program may start, `published` or not (checked after the token, so
/// that a console without one learns that first).
pub(crate) fn published(published: bool) -> Result<(), Refusal> {
    if published {
        Ok(())
    } else {
        Err(Refusal::NotPublished)
    }
}

/// Whether `peer` may copy from `program` here, presenting `token`: its engine token must
/// pass, and its director's approval (`approved_until`, ms since the epoch) must still hold
/// (the director approves the engines of live stations it found in the registry).
pub(crate) fn copy(
    trusted: &TrustedIssuers,
    token: Option<&[u8]>,
    approved_until: Option<u64>,
    (program, peer): (&ProgramId, &PeerId),
    now_ms: u64,
) -> Result<(), Refusal> {
    if trusted.is_empty() {
        return Err(Refusal::NoIssuer("copy"));
    }
    let token = token.ok_or(Refusal::NoEngineToken)?;
    trusted.verify(token, now_ms, Audience::Engine, Some(program), peer)?;
    if approved_until.is_none_or(|until| until < now_ms) {
        return Err(Refusal::NotApproved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::token::{Issuer, Rights};

    const NOW: u64 = 1_000_000_000;

    fn setup() -> (Issuer, TrustedIssuers, PeerId, ProgramId) {
        let issuer = Issuer::generate();
        let trusted: TrustedIssuers = [issuer.public()].into_iter().collect();
        (issuer, trusted, PeerId::random(), ProgramId([7; 32]))
    }

    fn token(issuer: &Issuer, peer: PeerId, audience: Audience) -> Vec<u8> {
        issuer
            .issue(peer, audience, Rights::All, NOW - 1000, NOW + 60_000)
            .unwrap_or_default()
    }

    #[test]
    fn streams_need_a_trusted_console_token_of_the_peer() {
        let (issuer, trusted, peer, program) = setup();
        let console = token(&issuer, peer, Audience::Console);
        assert!(stream(&trusted, Some(&console), &program, &peer, NOW).is_ok());
        // A station that trusts nobody serves nobody, token or not.
        let none = TrustedIssuers::default();
        assert!(matches!(
            stream(&none, Some(&console), &program, &peer, NOW),
            Err(Refusal::NoIssuer("stream"))
        ));
        assert!(matches!(
            stream(&trusted, None, &program, &peer, NOW),
            Err(Refusal::NoConsoleToken)
        ));
        // Copied to another peer, expired, or of the wrong kind: refused with the token's
        // own reason.
        let other = PeerId::random();
        assert!(matches!(
            stream(&trusted, Some(&console), &program, &other, NOW),
            Err(Refusal::Token(TokenError::WrongPeer))
        ));
        assert!(matches!(
            stream(&trusted, Some(&console), &program, &peer, NOW + 3_600_000),
            Err(Refusal::Token(TokenError::Expired))
        ));
        let engine = token(&issuer, peer, Audience::Engine);
        assert!(matches!(
            stream(&trusted, Some(&engine), &program, &peer, NOW),
            Err(Refusal::Token(TokenError::WrongAudience { .. }))
        ));
    }

    #[test]
    fn copies_need_an_engine_token_and_a_standing_approval() {
        let (issuer, trusted, peer, program) = setup();
        let engine = token(&issuer, peer, Audience::Engine);
        let ask = |token: Option<&[u8]>, approved: Option<u64>, now: u64| {
            copy(&trusted, token, approved, (&program, &peer), now)
        };
        assert!(ask(Some(&engine), Some(NOW + 10), NOW).is_ok());
        assert!(matches!(
            ask(None, Some(NOW + 10), NOW),
            Err(Refusal::NoEngineToken)
        ));
        // The token is checked before the approval: a bad token says why it is bad.
        let console = token(&issuer, peer, Audience::Console);
        assert!(matches!(
            ask(Some(&console), None, NOW),
            Err(Refusal::Token(TokenError::WrongAudience { .. }))
        ));
        assert!(matches!(
            ask(Some(&engine), None, NOW),
            Err(Refusal::NotApproved)
        ));
        assert!(matches!(
            ask(Some(&engine), Some(NOW - 1), NOW),
            Err(Refusal::NotApproved)
        ));
        let none = TrustedIssuers::default();
        assert!(matches!(
            copy(&none, Some(&engine), Some(NOW + 10), (&program, &peer), NOW),
            Err(Refusal::NoIssuer("copy"))
        ));
    }
}
