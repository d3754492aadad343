// vodmesh patch (README, "Vendored libp2p-tls"): this file is not in upstream libp2p-tls 0.7.0.

//! Which cipher suite the handshakes of this process negotiated, over TCP and QUIC alike.
//!
//! A connection's `rustls` state is out of a caller's reach once it is upgraded (yamux wraps
//! the TLS stream; quinn keeps its session to itself), so each suite of [`suites`] carries a
//! wrapper around its HKDF that counts one handshake whenever rustls derives a master secret
//! with it: `HKDF-Extract(derived, 0)`, done once per completed key schedule (fresh or
//! resumed), and only with the suite the two sides agreed on. QUIC's Initial keys use the
//! AES-128-GCM suite's HKDF too, but with `extract_from_secret`, so they are not counted.
//! Every other call goes to the wrapped HKDF unchanged.

use std::sync::{
    OnceLock,
    atomic::{AtomicU64, Ordering},
};

use rustls::{
    CipherSuite, SupportedCipherSuite, Tls13CipherSuite,
    crypto::{
        ActiveKeyExchange, CipherSuiteCommon,
        hmac::Tag,
        tls13::{Hkdf, HkdfExpander, OkmBlock},
    },
};

/// The suites offered, in `verifier::CIPHERSUITES`' order, each counting its handshakes.
pub(crate) fn suites() -> Vec<SupportedCipherSuite> {
    static SUITES: OnceLock<Vec<SupportedCipherSuite>> = OnceLock::new();
    SUITES
        .get_or_init(|| {
            crate::verifier::CIPHERSUITES
                .iter()
                .enumerate()
                .map(|(i, s)| match s {
                    SupportedCipherSuite::Tls13(inner) => {
                        let hkdf: &'static Counted = Box::leak(Box::new(Counted {
                            inner: inner.hkdf_provider,
                            slot: i,
                        }));
                        let suite: &'static Tls13CipherSuite =
                            Box::leak(Box::new(Tls13CipherSuite {
                                common: CipherSuiteCommon {
                                    suite: inner.common.suite,
                                    hash_provider: inner.common.hash_provider,
                                    confidentiality_limit: inner.common.confidentiality_limit,
                                },
                                hkdf_provider: hkdf,
                                aead_alg: inner.aead_alg,
                                quic: inner.quic,
                            }));
                        SupportedCipherSuite::Tls13(suite)
                    }
                    // A TLS 1.2 suite, when another crate turns rustls' `tls12` on.
                    #[allow(unreachable_patterns)]
                    other => *other,
                })
                .collect()
        })
        .clone()
}

/// Handshakes per slot of `verifier::CIPHERSUITES` (at most 3 suites there).
static COUNTS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// How many handshakes of this process negotiated each suite, one entry per offered suite
/// in the order offered. Both sides of a connection count: a connection between two peers of
/// one process adds 2. Over TCP a connection counts only if it chose `/tls/1.0.0` (not noise).
pub fn negotiated_suites() -> Vec<(CipherSuite, u64)> {
    crate::verifier::CIPHERSUITES
        .iter()
        .zip(&COUNTS)
        .map(|(s, c)| (s.suite(), c.load(Ordering::Relaxed)))
        .collect()
}

struct Counted {
    inner: &'static dyn Hkdf,
    slot: usize,
}

impl Hkdf for Counted {
    fn extract_from_zero_ikm(&self, salt: Option<&[u8]>) -> Box<dyn HkdfExpander> {
        // With a salt, this is the master secret (RFC 8446 7.1): once per handshake.
        if salt.is_some()
            && let Some(c) = COUNTS.get(self.slot)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.extract_from_zero_ikm(salt)
    }

    fn extract_from_secret(&self, salt: Option<&[u8]>, secret: &[u8]) -> Box<dyn HkdfExpander> {
        self.inner.extract_from_secret(salt, secret)
    }

    fn extract_from_kx_shared_secret(
        &self,
        salt: Option<&[u8]>,
        kx: Box<dyn ActiveKeyExchange>,
        peer_pub_key: &[u8],
    ) -> Result<Box<dyn HkdfExpander>, rustls::Error> {
        self.inner
            .extract_from_kx_shared_secret(salt, kx, peer_pub_key)
    }

    fn expander_for_okm(&self, okm: &OkmBlock) -> Box<dyn HkdfExpander> {
        self.inner.expander_for_okm(okm)
    }

    fn hmac_sign(&self, key: &OkmBlock, message: &[u8]) -> Tag {
        self.inner.hmac_sign(key, message)
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}
