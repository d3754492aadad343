//! Security tokens: ed25519-signed CBOR capabilities, bound to the holder's peer id.
//!
//! The auth server ([`Issuer`]) signs [`Claims`]: who issued it, which peer holds it, what kind
//! of token it is ([`Audience`]), which programs it opens ([`Rights`]) and when it is valid.
//! Every director and engine checks a token offline with [`TrustedIssuers::verify`]: no call to
//! the auth server, only its public key (the issuer string `ed25519:<base58>`, see
//! [`IssuerKey`]), which operators pass with `--trust` and read from `node.json`.
//!
//! On the wire a token is the CBOR of `{c: <claims CBOR>, s: <64-byte signature>}`; the
//! signature covers `vodmesh/token/1 || 0x00 || <claims CBOR>`, so no other signed vodmesh
//! object can pass as a token. A token is a few hundred bytes; decoding refuses more than
//! [`MAX_TOKEN`].
//!
//! Because the subject is the peer id on the other end of the authenticated (noise) connection,
//! a token copied to another peer is worthless.
//!
//! The one kind not bound to a connection is the URL token ([`Audience::Url`]): a standard
//! player fetches `http://.../v/<program>/...?token=<base58>` over plain HTTP, with no peer
//! id. It is bound instead to its programs, a short lifetime and, optionally, the client's
//! address prefix ([`AddrPrefix`]), and checked with [`TrustedIssuers::verify_url`]. Its
//! subject is the console of the subscriber it was issued to (for logs and limits).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use libp2p::PeerId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

use crate::codec::{self, DecodeError};
use crate::ids::ProgramId;
use crate::station::Roles;

/// Signature domain of tokens.
pub const DOMAIN: &str = "vodmesh/token/1";
/// Largest token accepted, in bytes. A token granting every program is ~250 bytes; one listing
/// programs grows by 34 bytes a program, so about 230 programs fit (grant `All` beyond that).
pub const MAX_TOKEN: usize = 8 * 1024;
/// How far apart the issuer's and the verifier's clocks may be, in milliseconds.
pub const CLOCK_SKEW_MS: u64 = 30_000;
/// Prefix of the issuer string.
const ISSUER_PREFIX: &str = "ed25519:";

/// Why a token was refused. The `Display` text is the one line a user sees (after `error: `).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The bytes are not a token (too large, not CBOR, wrong field sizes).
    #[error("malformed token: {}", .0.reason())]
    Malformed(#[from] DecodeError),
    /// The token was signed by a key this peer does not trust.
    #[error("unknown issuer")]
    UnknownIssuer(IssuerKey),
    /// The signature does not match the claims and the issuer key.
    #[error("forged signature")]
    ForgedSignature,
    /// `not_before` is still ahead, even allowing for clock skew.
    #[error("token not yet valid")]
    NotYetValid,
    /// `expires` has passed, even allowing for clock skew.
    #[error("token expired")]
    Expired,
    /// A token of another kind (e.g. a console token offered for a copy).
    #[error("wrong token kind: {got}, expected {expected}")]
    WrongAudience {
        /// The kind this operation needs.
        expected: Audience,
        /// The kind presented.
        got: Audience,
    },
    /// The token's rights do not include the requested program.
    #[error("not entitled to this program")]
    NotEntitled,
    /// The token was issued to another peer than the one presenting it.
    #[error("token belongs to another peer")]
    WrongPeer,
    /// A URL token presented from an address outside the prefix it is bound to.
    #[error("token bound to other client addresses")]
    WrongAddress,
    /// A URL token's text is not base58, or longer than any token.
    #[error("malformed token: not a URL token")]
    NotUrlToken,
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The signed token would exceed [`MAX_TOKEN`]: too many programs listed.
    #[error("token of {len} bytes exceeds the limit of {limit}: grant fewer programs or all")]
    TooLarge {
        /// Bytes the token would take.
        len: usize,
        /// Bytes allowed.
        limit: usize,
    },
}

/// An issuer string that did not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid issuer key (expected ed25519:<base58 of 32 bytes>): {0}")]
pub struct ParseIssuerError(String);

/// What a token is for.
///
/// Variants are only ever appended, never reordered or removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    /// A console streaming programs from engines.
    Console,
    /// An engine copying segments from other engines.
    Engine,
    /// An operator: ingest, publish, user add, enroll.
    Admin,
    /// A new station enrolling with the auth server.
    Enroll,
    /// A station certificate: the subject (a director) is a member of the swarm, with the
    /// roles of [`Claims::roles`] ([`crate::member`]).
    Member,
    /// A URL token: a standard player's `?token=` on the HTTP edge, bound to programs, an
    /// expiry and optionally a client address prefix, not to a connection.
    Url,
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Console => "console token",
            Self::Engine => "engine token",
            Self::Admin => "admin token",
            Self::Enroll => "enrollment token",
            Self::Member => "station certificate",
            Self::Url => "URL token",
        })
    }
}

/// Which programs a token opens.
///
/// Variants are only ever appended, never reordered or removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rights {
    /// Every program.
    All,
    /// Only these.
    Programs(Vec<ProgramId>),
}

impl Rights {
    /// Whether these rights open `program`.
    pub fn allows(&self, program: &ProgramId) -> bool {
        match self {
            Self::All => true,
            Self::Programs(list) => list.contains(program),
        }
    }
}

/// An issuer's ed25519 public key: what peers trust.
///
/// Its string form, used by `--trust` and `node.json`'s `"issuer"`, is `ed25519:` followed by
/// the base58 (bitcoin alphabet) of the 32 key bytes, e.g.
/// `ed25519:4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS`. On the wire it is 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerKey([u8; 32]);

impl IssuerKey {
    /// The key from its 32 bytes; refuses bytes that are not an ed25519 point, and points of
    /// small order (weak keys, for which signatures prove nothing).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, ParseIssuerError> {
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| ParseIssuerError(e.to_string()))?;
        if key.is_weak() {
            return Err(ParseIssuerError("a weak (small-order) key".into()));
        }
        Ok(Self(bytes))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The last 8 characters of the string form, for log fields.
    pub fn short(&self) -> String {
        let s = bs58::encode(self.0).into_string();
        s[s.len().saturating_sub(8)..].to_string()
    }
}

impl fmt::Display for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ISSUER_PREFIX}{}", bs58::encode(self.0).into_string())
    }
}

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerKey({})", self.short())
    }
}

impl FromStr for IssuerKey {
    type Err = ParseIssuerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b58 = s
            .trim()
            .strip_prefix(ISSUER_PREFIX)
            .ok_or_else(|| ParseIssuerError("missing the `ed25519:` prefix".into()))?;
        let mut bytes = [0u8; 32];
        let n = bs58::decode(b58)
            .onto(&mut bytes[..])
            .map_err(|e| ParseIssuerError(e.to_string()))?;
        if n != 32 {
            return Err(ParseIssuerError(format!("{n} bytes, not 32")));
        }
        Self::from_bytes(bytes)
    }
}

impl Serialize for IssuerKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for IssuerKey {
    // Only the length is checked here; whether the key is trusted (and so a valid point) is
    // decided by `TrustedIssuers`, which holds parsed keys.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = ByteBuf::deserialize(d)?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"32 bytes"))?;
        Ok(Self(arr))
    }
}

/// A token's unique id: 16 random bytes (for logs, and revocation lists later).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(pub [u8; 16]);

impl TokenId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({})", hex::encode(&self.0[..4]))
    }
}

impl Serialize for TokenId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = ByteBuf::deserialize(d)?;
        let arr: [u8; 16] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"16 bytes"))?;
        Ok(Self(arr))
    }
}

/// What a token says. Field names are one to three letters on the wire to keep tokens small.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The key that signed it.
    #[serde(rename = "iss")]
    pub issuer: IssuerKey,
    /// The only peer that may present it.
    #[serde(rename = "sub")]
    pub subject: PeerId,
    /// What it is for.
    #[serde(rename = "aud")]
    pub audience: Audience,
    /// Which programs it opens.
    #[serde(rename = "r")]
    pub rights: Rights,
    /// Valid from (ms since the Unix epoch).
    #[serde(rename = "nbf")]
    pub not_before_ms: u64,
    /// Valid until (ms since the Unix epoch), exclusive.
    #[serde(rename = "exp")]
    pub expires_ms: u64,
    /// Unique id.
    #[serde(rename = "id")]
    pub id: TokenId,
    /// The subscriber a console token was issued to at login, so that a refresh follows what
    /// became of her (disabled, removed, other rights); `None` in other tokens.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The station roles granted, in an enrollment token and a station certificate (absent
    /// from every other kind, and from tokens of earlier releases).
    #[serde(rename = "ro", default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Roles>,
    /// The client addresses a URL token may be presented from (absent: any).
    #[serde(rename = "ip", default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<AddrPrefix>,
}

/// An IP address prefix (`203.0.113.0/24`, `2001:db8::/32`, or one address): the client
/// addresses a URL token may be presented from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrPrefix {
    /// The network address.
    pub ip: IpAddr,
    /// Leading bits that must match (at most 32 for IPv4, 128 for IPv6).
    pub bits: u8,
}

/// An address prefix that did not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid address prefix (expected ADDR or ADDR/BITS): {0}")]
pub struct ParsePrefixError(&'static str);

impl AddrPrefix {
    /// Whether `addr` is inside the prefix (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.ip.to_canonical(), addr.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                prefix_match(&net.octets(), &a.octets(), self.bits.min(32))
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                prefix_match(&net.octets(), &a.octets(), self.bits.min(128))
            }
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_match(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    if a.get(..whole) != b.get(..whole) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(whole), b.get(whole)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

impl fmt::Display for AddrPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.bits)
    }
}

impl FromStr for AddrPrefix {
    type Err = ParsePrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, bits) = match s.trim().split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s.trim(), None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| ParsePrefixError("not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .parse()
                .map_err(|_| ParsePrefixError("bits not a number"))?,
            None => max,
        };
        if bits > max {
            return Err(ParsePrefixError("more bits than the address has"));
        }
        Ok(Self { ip, bits })
    }
}

/// Largest URL token, in bytes: [`Issuer::sign`] signs none larger. One program, a 64-byte
/// user name and an IPv6 prefix take about 400; a URL token for every program a subscriber may
/// watch lists them all, so about 18 programs fit (name the program, or grant all, beyond).
pub const MAX_URL_TOKEN_BYTES: usize = 1024;

/// Longest `?token=` text accepted: the base58 of [`MAX_URL_TOKEN_BYTES`] bytes, with a
/// margin. Checked before decoding: base58 decoding takes time quadratic in the length (16 KiB
/// of text cost a core tens of milliseconds), and the text comes from anyone on the network.
pub const MAX_URL_TOKEN: usize = base58_len(MAX_URL_TOKEN_BYTES) + 16;

/// Characters of the base58 of `bytes` bytes, at most: each byte is log 256 / log 58 < 1.37
/// digits (a leading zero byte is one `1`).
const fn base58_len(bytes: usize) -> usize {
    (bytes * 137).div_ceil(100)
}

/// A token as the text of a URL's `token=` parameter (base58: no character needs escaping).
pub fn to_url_param(token: &[u8]) -> String {
    bs58::encode(token).into_string()
}

/// The token bytes of a `token=` parameter; longer than [`MAX_URL_TOKEN`] characters, it is
/// refused before it is decoded.
pub fn from_url_param(text: &str) -> Result<Vec<u8>, TokenError> {
    if text.len() > MAX_URL_TOKEN {
        return Err(TokenError::NotUrlToken);
    }
    bs58::decode(text)
        .into_vec()
        .map_err(|_| TokenError::NotUrlToken)
}

impl Claims {
    /// Decodes the claims of `token` without checking anything: for a holder reading its own
    /// token's expiry, never for a decision to grant access.
    pub fn peek(token: &[u8]) -> Result<Self, TokenError> {
        Ok(Envelope::decode(token)?.claims()?)
    }
}

/// The token as sent: claims CBOR and the signature over it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    #[serde(rename = "c")]
    claims: ByteBuf,
    #[serde(rename = "s")]
    signature: ByteBuf,
}

impl Envelope {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes, MAX_TOKEN)
    }

    fn claims(&self) -> Result<Claims, DecodeError> {
        codec::decode(&self.claims, MAX_TOKEN)
    }
}

fn message(claims: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 1 + claims.len());
    m.extend_from_slice(DOMAIN.as_bytes());
    m.push(0);
    m.extend_from_slice(claims);
    m
}

/// The auth server's signing key.
pub struct Issuer {
    key: SigningKey,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "Issuer({})", self.public())
    }
}

impl Issuer {
    /// A new random key.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The key from its 32-byte secret seed.
    pub fn from_secret(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte secret seed, for the key file.
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key peers trust.
    pub fn public(&self) -> IssuerKey {
        IssuerKey(self.key.verifying_key().to_bytes())
    }

    /// Signs a token for `subject` with a fresh random id.
    pub fn issue(
        &self,
        subject: PeerId,
        audience: Audience,
        rights: Rights,
        not_before_ms: u64,
        expires_ms: u64,
    ) -> Result<Vec<u8>, IssueError> {
        self.sign(&Claims {
            issuer: self.public(),
            subject,
            audience,
            rights,
            not_before_ms,
            expires_ms,
            id: TokenId::random(),
            user: None,
            roles: None,
            addr: None,
        })
    }

    /// Signs `claims` as they are, except that the issuer is always this key. A token is at
    /// most [`MAX_TOKEN`] bytes, a URL token at most [`MAX_URL_TOKEN_BYTES`].
    pub fn sign(&self, claims: &Claims) -> Result<Vec<u8>, IssueError> {
        let claims = Claims {
            issuer: self.public(),
            ..claims.clone()
        };
        let audience = claims.audience;
        let claims = codec::encode(&claims);
        let signature = self.key.sign(&message(&claims));
        let bytes = codec::encode(&Envelope {
            claims: ByteBuf::from(claims),
            signature: ByteBuf::from(signature.to_bytes().to_vec()),
        });
        let limit = match audience {
            Audience::Url => MAX_URL_TOKEN_BYTES,
            _ => MAX_TOKEN,
        };
        if bytes.len() > limit {
            return Err(IssueError::TooLarge {
                len: bytes.len(),
                limit,
            });
        }
        Ok(bytes)
    }
}

/// The issuer keys a peer accepts tokens from.
#[derive(Clone, Debug, Default)]
pub struct TrustedIssuers {
    keys: HashMap<IssuerKey, VerifyingKey>,
}

impl TrustedIssuers {
    /// Trusts no one.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key` too.
    pub fn insert(&mut self, key: IssuerKey) -> Result<(), ParseIssuerError> {
        let vk = VerifyingKey::from_bytes(key.as_bytes())
            .map_err(|e| ParseIssuerError(e.to_string()))?;
        if vk.is_weak() {
            return Err(ParseIssuerError("a weak (small-order) key".into()));
        }
        self.keys.insert(key, vk);
        Ok(())
    }

    /// Whether `key` is trusted.
    pub fn contains(&self, key: &IssuerKey) -> bool {
        self.keys.contains_key(key)
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys.
    pub fn keys(&self) -> impl Iterator<Item = &IssuerKey> {
        self.keys.keys()
    }

    /// Checks `token` as presented by `remote_peer` (the peer on the other end of the
    /// authenticated connection) at `now_ms`, for an operation needing `expected`, on
    /// `program` if the operation concerns one. Checks, in this order: it decodes (at most
    /// [`MAX_TOKEN`] bytes), the issuer is trusted, the signature, not-before and expiry (each
    /// with [`CLOCK_SKEW_MS`] of slack), the audience, the rights for `program`, and that the
    /// subject is `remote_peer`. Returns the claims of a token that passes.
    pub fn verify(
        &self,
        token: &[u8],
        now_ms: u64,
        expected: Audience,
        program: Option<&ProgramId>,
        remote_peer: &PeerId,
    ) -> Result<Claims, TokenError> {
        let claims = self.check(token, now_ms, expected, program)?;
        if claims.subject != *remote_peer {
            return Err(TokenError::WrongPeer);
        }
        Ok(claims)
    }

    /// Checks a URL token ([`Audience::Url`]) presented over HTTP from `client` at `now_ms`
    /// for `program`: as [`TrustedIssuers::verify`] up to the rights, then that `client` is
    /// inside the token's address prefix, if it has one. Returns the claims of a token that
    /// passes.
    pub fn verify_url(
        &self,
        token: &[u8],
        now_ms: u64,
        program: &ProgramId,
        client: IpAddr,
    ) -> Result<Claims, TokenError> {
        let claims = self.check(token, now_ms, Audience::Url, Some(program))?;
        if let Some(prefix) = &claims.addr
            && !prefix.contains(client)
        {
            return Err(TokenError::WrongAddress);
        }
        Ok(claims)
    }

    /// The checks every kind shares, in the order [`TrustedIssuers::verify`] documents, up to
    /// the rights.
    fn check(
        &self,
        token: &[u8],
        now_ms: u64,
        expected: Audience,
        program: Option<&ProgramId>,
    ) -> Result<Claims, TokenError> {
        let envelope = Envelope::decode(token)?;
        let claims = envelope.claims()?;
        let Some(key) = self.keys.get(&claims.issuer) else {
            return Err(TokenError::UnknownIssuer(claims.issuer));
        };
        // A signature of the wrong length cannot match: it is a forgery, not a format error.
        let signature =
            Signature::from_slice(&envelope.signature).map_err(|_| TokenError::ForgedSignature)?;
        // Strict verification refuses malleable signatures and small-order keys.
        key.verify_strict(&message(&envelope.claims), &signature)
            .map_err(|_| TokenError::ForgedSignature)?;
        if now_ms.saturating_add(CLOCK_SKEW_MS) < claims.not_before_ms {
            return Err(TokenError::NotYetValid);
        }
        if now_ms >= claims.expires_ms.saturating_add(CLOCK_SKEW_MS) {
            return Err(TokenError::Expired);
        }
        if claims.audience != expected {
            return Err(TokenError::WrongAudience {
                expected,
                got: claims.audience,
            });
        }
        if let Some(program) = program
            && !claims.rights.allows(program)
        {
            return Err(TokenError::NotEntitled);
        }
        Ok(claims)
    }
}

impl FromIterator<IssuerKey> for TrustedIssuers {
    /// Trusts every key given; keys that are not ed25519 points are skipped (an [`IssuerKey`]
    /// made by parsing or by an [`Issuer`] always is one).
    fn from_iter<I: IntoIterator<Item = IssuerKey>>(iter: I) -> Self {
        let mut t = Self::new();
        for key in iter {
            let _ = t.insert(key);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000_000;
    const HOUR: u64 = 3_600_000;

    fn program(n: u8) -> ProgramId {
        ProgramId([n; 32])
    }

    struct Fixture {
        issuer: Issuer,
        trusted: TrustedIssuers,
        peer: PeerId,
    }

    fn fixture() -> Fixture {
        let issuer = Issuer::generate();
        let trusted = [issuer.public()].into_iter().collect();
        Fixture {
            issuer,
            trusted,
            peer: PeerId::random(),
        }
    }

    impl Fixture {
        fn token(&self, audience: Audience, rights: Rights) -> Vec<u8> {
            self.issuer
                .issue(self.peer, audience, rights, NOW, NOW + HOUR)
                .unwrap()
        }
    }

    #[test]
    fn each_kind_is_accepted_for_its_holder() {
        let f = fixture();
        for aud in [
            Audience::Console,
            Audience::Engine,
            Audience::Admin,
            Audience::Enroll,
        ] {
            let token = f.token(aud, Rights::All);
            let claims = f
                .trusted
                .verify(&token, NOW + 1000, aud, Some(&program(1)), &f.peer)
                .unwrap();
            assert_eq!(claims.audience, aud);
            assert_eq!(claims.subject, f.peer);
            assert_eq!(claims.issuer, f.issuer.public());
            assert_eq!(Claims::peek(&token).unwrap(), claims);
            // Operations that concern no program.
            f.trusted.verify(&token, NOW, aud, None, &f.peer).unwrap();
        }
        // Listed programs.
        let token = f.token(
            Audience::Console,
            Rights::Programs(vec![program(1), program(2)]),
        );
        for p in [program(1), program(2)] {
            f.trusted
                .verify(&token, NOW, Audience::Console, Some(&p), &f.peer)
                .unwrap();
        }
    }

    #[test]
    fn tokens_are_compact() {
        let f = fixture();
        let token = f.token(Audience::Console, Rights::All);
        assert!(token.len() < 300, "{} bytes", token.len());
    }

    #[test]
    fn ids_are_random() {
        let f = fixture();
        let a = Claims::peek(&f.token(Audience::Console, Rights::All)).unwrap();
        let b = Claims::peek(&f.token(Audience::Console, Rights::All)).unwrap();
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn unknown_issuer_is_refused() {
        let f = fixture();
        let stranger = Issuer::generate();
        let token = stranger
            .issue(f.peer, Audience::Console, Rights::All, NOW, NOW + HOUR)
            .unwrap();
        let err = f
            .trusted
            .verify(&token, NOW, Audience::Console, None, &f.peer)
            .unwrap_err();
        assert!(matches!(err, TokenError::UnknownIssuer(k) if k == stranger.public()));
        assert_eq!(err.to_string(), "unknown issuer");
        // Nobody trusted at all.
        assert!(matches!(
            TrustedIssuers::new().verify(&token, NOW, Audience::Console, None, &f.peer),
            Err(TokenError::UnknownIssuer(_))
        ));
    }

    #[test]
    fn forged_signatures_are_refused() {
        let f = fixture();
        let token = f.token(Audience::Console, Rights::Programs(vec![program(1)]));
        let check = |bytes: &[u8]| {
            f.trusted
                .verify(bytes, NOW, Audience::Console, Some(&program(9)), &f.peer)
                .unwrap_err()
        };

        // Widened rights under the original signature.
        let mut env: Envelope = codec::decode(&token, MAX_TOKEN).unwrap();
        let mut claims = env.claims().unwrap();
        claims.rights = Rights::All;
        env.claims = ByteBuf::from(codec::encode(&claims));
        let err = check(&codec::encode(&env));
        assert!(matches!(err, TokenError::ForgedSignature), "{err}");
        assert_eq!(err.to_string(), "forged signature");

        // Signed by another key while naming the trusted issuer.
        let mallory = Issuer::generate();
        let forged = mallory.sign(&claims).unwrap();
        let mut env: Envelope = codec::decode(&forged, MAX_TOKEN).unwrap();
        let mut c = env.claims().unwrap();
        c.issuer = f.issuer.public();
        env.claims = ByteBuf::from(codec::encode(&c));
        assert!(matches!(
            check(&codec::encode(&env)),
            TokenError::ForgedSignature
        ));

        // A flipped signature bit; a truncated and an empty signature.
        let mut env: Envelope = codec::decode(&token, MAX_TOKEN).unwrap();
        env.signature[10] ^= 1;
        assert!(matches!(
            check(&codec::encode(&env)),
            TokenError::ForgedSignature
        ));
        env.signature.truncate(63);
        assert!(matches!(
            check(&codec::encode(&env)),
            TokenError::ForgedSignature
        ));
        env.signature.clear();
        assert!(matches!(
            check(&codec::encode(&env)),
            TokenError::ForgedSignature
        ));
    }

    #[test]
    fn the_signature_is_domain_separated() {
        let f = fixture();
        let token = f.token(Audience::Console, Rights::All);
        let env: Envelope = codec::decode(&token, MAX_TOKEN).unwrap();
        let sig = Signature::from_slice(&env.signature).unwrap();
        let vk = VerifyingKey::from_bytes(f.issuer.public().as_bytes()).unwrap();
        assert!(vk.verify_strict(&env.claims, &sig).is_err());
        assert!(vk.verify_strict(&message(&env.claims), &sig).is_ok());
    }

    #[test]
    fn time_window_allows_skew_and_no_more() {
        let f = fixture();
        let token = f.token(Audience::Console, Rights::All);
        let at = |now| {
            f.trusted
                .verify(&token, now, Audience::Console, None, &f.peer)
        };
        // Not before: accepted up to the skew early.
        assert!(at(NOW - CLOCK_SKEW_MS).is_ok());
        let err = at(NOW - CLOCK_SKEW_MS - 1).unwrap_err();
        assert!(matches!(err, TokenError::NotYetValid));
        assert_eq!(err.to_string(), "token not yet valid");
        // Expiry: accepted until the skew late.
        assert!(at(NOW + HOUR).is_ok());
        assert!(at(NOW + HOUR + CLOCK_SKEW_MS - 1).is_ok());
        let err = at(NOW + HOUR + CLOCK_SKEW_MS).unwrap_err();
        assert!(matches!(err, TokenError::Expired));
        assert_eq!(err.to_string(), "token expired");
        // Extremes do not overflow.
        assert!(matches!(at(u64::MAX), Err(TokenError::Expired)));
        assert!(matches!(at(0), Err(TokenError::NotYetValid)));
    }

    #[test]
    fn wrong_kind_is_refused() {
        let f = fixture();
        let token = f.token(Audience::Console, Rights::All);
        let err = f
            .trusted
            .verify(&token, NOW, Audience::Engine, None, &f.peer)
            .unwrap_err();
        assert!(matches!(
            err,
            TokenError::WrongAudience {
                expected: Audience::Engine,
                got: Audience::Console
            }
        ));
        assert_eq!(
            err.to_string(),
            "wrong token kind: console token, expected engine token"
        );
        for (got, expected) in [
            (Audience::Engine, Audience::Console),
            (Audience::Console, Audience::Admin),
            (Audience::Admin, Audience::Enroll),
            (Audience::Enroll, Audience::Engine),
        ] {
            let token = f.token(got, Rights::All);
            assert!(matches!(
                f.trusted.verify(&token, NOW, expected, None, &f.peer),
                Err(TokenError::WrongAudience { .. })
            ));
        }
    }

    #[test]
    fn unlisted_program_is_refused() {
        let f = fixture();
        let token = f.token(Audience::Console, Rights::Programs(vec![program(1)]));
        let err = f
            .trusted
            .verify(&token, NOW, Audience::Console, Some(&program(2)), &f.peer)
            .unwrap_err();
        assert!(matches!(err, TokenError::NotEntitled));
        assert_eq!(err.to_string(), "not entitled to this program");
        let empty = f.token(Audience::Console, Rights::Programs(vec![]));
        assert!(matches!(
            f.trusted
                .verify(&empty, NOW, Audience::Console, Some(&program(1)), &f.peer),
            Err(TokenError::NotEntitled)
        ));
    }

    #[test]
    fn a_copied_token_is_worthless() {
        let f = fixture();
        let token = f.token(Audience::Console, Rights::All);
        let thief = PeerId::random();
        let err = f
            .trusted
            .verify(&token, NOW, Audience::Console, None, &thief)
            .unwrap_err();
        assert!(matches!(err, TokenError::WrongPeer));
        assert_eq!(err.to_string(), "token belongs to another peer");
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        // A token wrong in every way reports the first check in the order.
        let f = fixture();
        let token = f
            .issuer
            .issue(
                f.peer,
                Audience::Console,
                Rights::Programs(vec![]),
                NOW,
                NOW + HOUR,
            )
            .unwrap();
        let thief = PeerId::random();
        let p = Some(&program(3));
        let v = |t: &TrustedIssuers, now| t.verify(&token, now, Audience::Engine, p, &thief);
        assert!(matches!(
            v(&TrustedIssuers::new(), NOW - HOUR),
            Err(TokenError::UnknownIssuer(_))
        ));
        assert!(matches!(
            v(&f.trusted, NOW - HOUR),
            Err(TokenError::NotYetValid)
        ));
        assert!(matches!(
            v(&f.trusted, NOW + 2 * HOUR),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            v(&f.trusted, NOW),
            Err(TokenError::WrongAudience { .. })
        ));
        assert!(matches!(
            f.trusted.verify(&token, NOW, Audience::Console, p, &thief),
            Err(TokenError::NotEntitled)
        ));
        assert!(matches!(
            f.trusted
                .verify(&token, NOW, Audience::Console, None, &thief),
            Err(TokenError::WrongPeer)
        ));
    }

    #[test]
    fn oversized_tokens_are_refused_both_ways() {
        let f = fixture();
        let many: Vec<ProgramId> = (0..400u32)
            .map(|i| ProgramId(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect();
        let err = f
            .issuer
            .issue(
                f.peer,
                Audience::Console,
                Rights::Programs(many),
                NOW,
                NOW + HOUR,
            )
            .unwrap_err();
        assert!(matches!(err, IssueError::TooLarge { .. }));

        let huge = vec![0u8; MAX_TOKEN + 1];
        let err = f
            .trusted
            .verify(&huge, NOW, Audience::Console, None, &f.peer)
            .unwrap_err();
        assert!(matches!(
            err,
            TokenError::Malformed(DecodeError::TooLarge { .. })
        ));
        assert!(err.to_string().starts_with("malformed token: "));
    }

    #[test]
    fn issuer_strings_round_trip_and_refuse_garbage() {
        let issuer = Issuer::generate();
        let key = issuer.public();
        let s = key.to_string();
        assert!(s.starts_with("ed25519:"));
        assert_eq!(s.parse::<IssuerKey>().unwrap(), key);
        assert_eq!(format!("  {s}\n").parse::<IssuerKey>().unwrap(), key);
        // The secret seed restores the same key.
        assert_eq!(Issuer::from_secret(&issuer.secret()).public(), key);
        // A known vector: the public key of RFC 8032's first ed25519 test.
        let rfc = "ed25519:FVen3X669xLzsi6N2V91DoiyzHzg1uAgqiT8jZ9nS96Z";
        let rfc_key = rfc.parse::<IssuerKey>().unwrap();
        assert_eq!(
            hex::encode(rfc_key.as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(rfc_key.to_string(), rfc);
        // 32 zero bytes decode to a point of small order: no one can be held to its signatures.
        let weak = format!("ed25519:{}", "1".repeat(32));
        assert!(weak.parse::<IssuerKey>().is_err());

        let b58 = s.strip_prefix("ed25519:").unwrap();
        for bad in [
            b58.to_string(),                                    // no prefix
            format!("rsa:{b58}"),                               // wrong scheme
            "ed25519:".to_string(),                             // empty
            format!("ed25519:{}", &b58[..b58.len() - 2]),       // short
            format!("ed25519:{b58}{b58}"),                      // long
            format!("ed25519:{}0", &b58[..b58.len() - 1]),      // '0' is not base58
            format!("ed25519:{}", hex::encode(key.as_bytes())), // hex is not the format
        ] {
            assert!(bad.parse::<IssuerKey>().is_err(), "{bad} parsed");
        }
        // Round trip through CBOR: 32 raw bytes.
        let bytes = codec::encode(&key);
        assert_eq!(bytes.len(), 34);
        assert_eq!(codec::decode::<IssuerKey>(&bytes, 64).unwrap(), key);
    }

    #[test]
    fn url_tokens_are_checked_for_program_kind_expiry_and_address() {
        let f = fixture();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let url = |rights, addr: Option<&str>, expires| {
            let claims = Claims {
                issuer: f.issuer.public(),
                subject: f.peer,
                audience: Audience::Url,
                rights,
                not_before_ms: NOW,
                expires_ms: expires,
                id: TokenId::random(),
                user: None,
                roles: None,
                addr: addr.map(|a| a.parse().unwrap()),
            };
            f.issuer.sign(&claims).unwrap()
        };
        let one = Rights::Programs(vec![program(1)]);
        let token = url(one.clone(), None, NOW + HOUR);
        let claims = f
            .trusted
            .verify_url(&token, NOW, &program(1), client)
            .unwrap();
        assert_eq!(claims.audience, Audience::Url);
        // Through the URL and back, unchanged.
        let text = to_url_param(&token);
        assert!(text.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(from_url_param(&text).unwrap(), token);
        assert!(matches!(
            from_url_param("0OIl"),
            Err(TokenError::NotUrlToken)
        ));
        assert!(matches!(
            from_url_param(&"2".repeat(MAX_URL_TOKEN + 1)),
            Err(TokenError::NotUrlToken)
        ));
        // Another program, expired, or a console token: refused, each with its reason.
        let err = f
            .trusted
            .verify_url(&token, NOW, &program(2), client)
            .unwrap_err();
        assert!(matches!(err, TokenError::NotEntitled));
        let old = url(one.clone(), None, NOW - HOUR);
        let err = f
            .trusted
            .verify_url(&old, NOW, &program(1), client)
            .unwrap_err();
        assert!(matches!(err, TokenError::Expired));
        let console = f.token(Audience::Console, Rights::All);
        let err = f
            .trusted
            .verify_url(&console, NOW, &program(1), client)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "wrong token kind: console token, expected URL token"
        );
        // A URL token opens no libp2p stream.
        assert!(matches!(
            f.trusted
                .verify(&token, NOW, Audience::Console, Some(&program(1)), &f.peer),
            Err(TokenError::WrongAudience { .. })
        ));
        // Bound to a prefix: inside passes (IPv4-mapped too), outside does not.
        let bound = url(Rights::All, Some("192.0.2.0/24"), NOW + HOUR);
        assert!(
            f.trusted
                .verify_url(&bound, NOW, &program(3), client)
                .is_ok()
        );
        let mapped: IpAddr = "::ffff:192.0.2.200".parse().unwrap();
        assert!(
            f.trusted
                .verify_url(&bound, NOW, &program(3), mapped)
                .is_ok()
        );
        let outside: IpAddr = "192.0.3.7".parse().unwrap();
        let err = f
            .trusted
            .verify_url(&bound, NOW, &program(3), outside)
            .unwrap_err();
        assert!(matches!(err, TokenError::WrongAddress));
        // Widening the prefix breaks the signature.
        let mut env: Envelope = codec::decode(&bound, MAX_TOKEN).unwrap();
        let mut c = env.claims().unwrap();
        c.addr = None;
        env.claims = ByteBuf::from(codec::encode(&c));
        let err = (f.trusted)
            .verify_url(&codec::encode(&env), NOW, &program(3), outside)
            .unwrap_err();
        assert!(matches!(err, TokenError::ForgedSignature));
    }

    /// A `?token=` text is decoded only up to the base58 length of the largest URL token the
    /// issuer signs: the largest real one passes through a URL, while a genuine token signed
    /// past the limit (by hand here, as an issuer without it would) is refused as text before
    /// any decoding, although its signature would pass.
    #[test]
    fn url_tokens_are_bounded_before_they_are_decoded() {
        let f = fixture();
        let client: IpAddr = "2001:db8::7".parse().unwrap();
        let claims = |programs: u8| Claims {
            issuer: f.issuer.public(),
            subject: f.peer,
            audience: Audience::Url,
            rights: Rights::Programs((1..=programs).map(program).collect()),
            not_before_ms: NOW,
            expires_ms: NOW + HOUR,
            id: TokenId::random(),
            user: Some("u".repeat(64)),
            roles: None,
            addr: Some("2001:db8::/32".parse().unwrap()),
        };
        // The largest URL token the issuer signs: one more program and it refuses.
        let mut programs = 1;
        let mut largest = f.issuer.sign(&claims(1)).unwrap();
        while let Ok(token) = f.issuer.sign(&claims(programs + 1)) {
            largest = token;
            programs += 1;
        }
        assert!(
            largest.len() <= MAX_URL_TOKEN_BYTES && programs >= 10,
            "{programs}"
        );
        let text = to_url_param(&largest);
        assert!(text.len() <= MAX_URL_TOKEN);
        let token = from_url_param(&text).unwrap();
        assert!(
            f.trusted
                .verify_url(&token, NOW, &program(1), client)
                .is_ok()
        );
        // Whatever the bytes, the text of a token within the limit is within the cap.
        for fill in [0x00, 0x01, 0xff] {
            let text = to_url_param(&[fill; MAX_URL_TOKEN_BYTES]);
            assert!(text.len() <= MAX_URL_TOKEN, "{fill}: {}", text.len());
        }

        // Signed past the limit, with the issuer's key itself.
        let encoded = codec::encode(&claims(programs + 20));
        let signature = f.issuer.key.sign(&message(&encoded));
        let oversized = codec::encode(&Envelope {
            claims: ByteBuf::from(encoded),
            signature: ByteBuf::from(signature.to_bytes().to_vec()),
        });
        assert!(
            f.trusted
                .verify_url(&oversized, NOW, &program(1), client)
                .is_ok()
        );
        let text = to_url_param(&oversized);
        assert!(text.len() > MAX_URL_TOKEN);
        assert!(matches!(
            from_url_param(&text),
            Err(TokenError::NotUrlToken)
        ));
        assert!(matches!(
            f.issuer.sign(&claims(programs + 20)),
            Err(IssueError::TooLarge {
                limit: MAX_URL_TOKEN_BYTES,
                ..
            })
        ));
    }

    #[test]
    fn address_prefixes_parse_and_match() {
        let p: AddrPrefix = "10.1.0.0/16".parse().unwrap();
        assert!(p.contains("10.1.255.3".parse().unwrap()));
        assert!(!p.contains("10.2.0.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        assert_eq!(p.to_string(), "10.1.0.0/16");
        let odd: AddrPrefix = "10.1.128.0/17".parse().unwrap();
        assert!(odd.contains("10.1.200.1".parse().unwrap()));
        assert!(!odd.contains("10.1.127.1".parse().unwrap()));
        let one: AddrPrefix = "127.0.0.1".parse().unwrap();
        assert_eq!(one.bits, 32);
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let any: AddrPrefix = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("198.51.100.1".parse().unwrap()));
        let v6: AddrPrefix = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0.0/x", "host/8"] {
            assert!(bad.parse::<AddrPrefix>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let f = fixture();
            prop_assert!(f.trusted.verify(&bytes, NOW, Audience::Console, None, &f.peer).is_err());
            let _ = Claims::peek(&bytes);
        }

        #[test]
        fn truncated_tokens_are_refused(cut in 0usize..400) {
            let f = fixture();
            let token = f.token(Audience::Console, Rights::Programs(vec![program(1)]));
            let cut = cut.min(token.len() - 1);
            prop_assert!(f.trusted
                .verify(&token[..cut], NOW, Audience::Console, None, &f.peer)
                .is_err());
        }

        #[test]
        fn bit_flips_never_pass(pos in 0usize..400, bit in 0u8..8) {
            let f = fixture();
            let token = f.token(Audience::Console, Rights::Programs(vec![program(1)]));
            let mut t = token.clone();
            let pos = pos % t.len();
            t[pos] ^= 1 << bit;
            // Whatever the flip hits, the result is an error or (if it hit only CBOR framing
            // that decodes to the same values) the very same claims.
            let p1 = program(1);
            if let Ok(c) = f.trusted.verify(&t, NOW, Audience::Console, Some(&p1), &f.peer) {
                prop_assert_eq!(c, Claims::peek(&token).unwrap());
            }
        }

        #[test]
        fn oversized_tokens_never_panic(extra in 1usize..4096, fill in any::<u8>()) {
            let f = fixture();
            let mut token = f.token(Audience::Console, Rights::All);
            token.resize(MAX_TOKEN + extra, fill);
            let refused = matches!(
                f.trusted.verify(&token, NOW, Audience::Console, None, &f.peer),
                Err(TokenError::Malformed(DecodeError::TooLarge { .. }))
            );
            prop_assert!(refused);
        }
    }
}
