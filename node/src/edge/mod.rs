//! The HTTP edge's plumbing shared by the director ([`crate::director`]'s playlists and
//! redirects) and the engines (their segments): the `token=` parameter, the offline check of
//! a URL token for the segment or playlist a path names, and one-line answers.
//!
//! URLs: `/v/<program id>/index.m3u8?token=...` (the director) and
//! `/v/<program id>/<n>.<ext>?token=...` (the director's redirect, then the engine). The token
//! is a URL token ([`vodmesh_proto::token::Audience::Url`]) in base58; every refusal is a 403
//! with its one line, an unknown path a 404.
//!
//! - `listener`: TCP or TLS connections held to [`Limits`]: the stall and idle cuts, and a cap
//!   on how many are open ([`Guarded`]).
//! - `cors`: the headers that let a page of any origin play (hls.js in a browser).

mod cors;
mod listener;

use std::net::SocketAddr;

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use libp2p::PeerId;
use vodmesh_proto::ProgramId;
use vodmesh_proto::hls::{segment_of, variant_of};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{TrustedIssuers, from_url_param};
use vodmesh_proto::{SegmentId, SegmentIndex};

pub(crate) use cors::{cors, preflight};
pub(crate) use listener::{Guarded, Limits};

/// The playlist's file name.
pub(crate) const PLAYLIST: &str = "index.m3u8";

/// A plain-text answer: `status` and one line.
pub(crate) fn line(status: StatusCode, text: impl std::fmt::Display) -> Response {
    let mut response = (status, format!("{text}\n")).into_response();
    let plain = HeaderValue::from_static("text/plain; charset=utf-8");
    response.headers_mut().insert(header::CONTENT_TYPE, plain);
    response
}

/// The `token=` parameter of a URI's query, if there is one.
pub(crate) fn token_param(uri: &Uri) -> Option<&str> {
    (uri.query()?.split('&')).find_map(|pair| pair.strip_prefix("token="))
}

/// Why a request is not served, and what the client sees.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// Not a segment URL.
    #[error("no such segment")]
    NotFound,
    /// No `token=` parameter.
    #[error("no token: ask for a URL with vodmesh-console url")]
    NoToken,
    /// This station trusts no issuer.
    #[error("this station trusts no token issuer and serves nothing")]
    NoIssuer,
    /// The token does not pass.
    #[error(transparent)]
    Token(#[from] vodmesh_proto::token::TokenError),
    /// The program's publish time has not come.
    #[error("{}", crate::director::error::NOT_PUBLISHED)]
    NotPublished,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = match self {
            Refused::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::FORBIDDEN,
        };
        line(status, self)
    }
}

/// What a path names: a program's playlist, or one of its segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Named {
    /// `index.m3u8`, or a rendition's `<name>.m3u8`.
    Playlist(ProgramId),
    /// `<n>.<ext>`.
    Segment(SegmentId),
}

impl Named {
    /// The program.
    pub(crate) fn program(&self) -> ProgramId {
        match self {
            Self::Playlist(p) => *p,
            Self::Segment(s) => s.program,
        }
    }
}

/// What `/v/<program>/<file>` names, if anything.
pub(crate) fn named(program: &str, file: &str) -> Option<Named> {
    let program: ProgramId = program.parse().ok()?;
    if file == PLAYLIST || variant_of(file).is_some() {
        return Some(Named::Playlist(program));
    }
    let index: SegmentIndex = segment_of(file)?;
    Some(Named::Segment(SegmentId::new(program, index)))
}

/// What a request names, and the subscriber its URL token was issued to, if the token passes
/// for `client`: checked offline, in the order the token module documents, then the address.
pub(crate) fn admit(
    trusted: &TrustedIssuers,
    (program, file): (&str, &str),
    uri: &Uri,
    client: SocketAddr,
) -> Result<(Named, PeerId), Refused> {
    let named = named(program, file).ok_or(Refused::NotFound)?;
    if trusted.is_empty() {
        return Err(Refused::NoIssuer);
    }
    let token = from_url_param(token_param(uri).ok_or(Refused::NoToken)?)?;
    let claims = trusted.verify_url(&token, now_ms(), &named.program(), client.ip())?;
    Ok((named, claims.subject))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_playlists_and_segments() {
        let id = ProgramId([7; 32]);
        let p = id.to_string();
        assert_eq!(named(&p, "index.m3u8"), Some(Named::Playlist(id)));
        assert_eq!(named(&p, "720p.m3u8"), Some(Named::Playlist(id)));
        assert_eq!(
            named(&p, "4.ts"),
            Some(Named::Segment(SegmentId::new(id, 4u32)))
        );
        assert_eq!(named(&p, "4.txt"), None);
        assert_eq!(named("not-a-program", "4.ts"), None);
        assert_eq!(named(&p, "../index.m3u8"), None);
    }

    /// The audit's 16 KiB `?token=zzz...` is refused (a 403, as any bad token) by its length,
    /// before base58 decoding, whose time grows with the square of it; a real URL token in the
    /// same place is admitted.
    #[test]
    fn an_over_long_token_is_refused_before_decoding_and_a_real_one_admitted() -> anyhow::Result<()>
    {
        use vodmesh_proto::token::{Audience, Issuer, Rights, TokenError, to_url_param};
        let issuer = Issuer::generate();
        let trusted: TrustedIssuers = [issuer.public()].into_iter().collect();
        let id = ProgramId([7; 32]);
        let p = id.to_string();
        let client: SocketAddr = "192.0.2.7:5000".parse()?;
        let rights = Rights::Programs(vec![id]);
        let subject = PeerId::random();
        let now = now_ms();
        let token = issuer.issue(subject, Audience::Url, rights, now, now + 3_600_000)?;
        let uri: Uri = format!("/v/{p}/3.ts?token={}", to_url_param(&token)).parse()?;
        let admitted = admit(&trusted, (&p, "3.ts"), &uri, client)?;
        assert_eq!(
            admitted,
            (Named::Segment(SegmentId::new(id, 3u32)), subject)
        );

        let uri: Uri = format!("/v/{p}/3.ts?token={}", "z".repeat(16 * 1024)).parse()?;
        let refused = admit(&trusted, (&p, "3.ts"), &uri, client).err();
        assert!(
            matches!(refused, Some(Refused::Token(TokenError::NotUrlToken))),
            "{refused:?}"
        );
        let status = refused.map(|r| r.into_response().status());
        assert_eq!(status, Some(StatusCode::FORBIDDEN));
        Ok(())
    }

    #[test]
    fn the_token_is_found_among_other_parameters() {
        let uri: Uri = "/v/p/1.ts?a=1&token=abc&b=2".parse().unwrap_or_default();
        assert_eq!(token_param(&uri), Some("abc"));
        let uri: Uri = "/v/p/1.ts?tokens=abc".parse().unwrap_or_default();
        assert_eq!(token_param(&uri), None);
        let uri: Uri = "/v/p/1.ts".parse().unwrap_or_default();
        assert_eq!(token_param(&uri), None);
    }
}
