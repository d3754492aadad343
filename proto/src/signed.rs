//! A signed envelope: a CBOR payload, the signer's libp2p public key, and a signature.
//!
//! The signature covers a domain string (what kind of thing this is) and the payload, so a
//! station record can never be replayed as a catalog record. The signer's peer id follows from
//! its key, which is how a reader checks that `station/<peer>` was written by `<peer>`.

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::codec::{self, DecodeError};

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignedError {
    /// The public key bytes are not a key.
    #[error("malformed signer key")]
    BadKey,
    /// The signature does not match the payload and key.
    #[error("bad signature")]
    BadSignature,
    /// The payload does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A payload signed by a libp2p identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// CBOR of the signed value.
    pub payload: ByteBuf,
    /// The signer's public key, in libp2p's protobuf encoding.
    pub public_key: ByteBuf,
    /// Signature over `domain || 0x00 || payload`.
    pub signature: ByteBuf,
}

fn message(domain: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 1 + payload.len());
    m.extend_from_slice(domain.as_bytes());
    m.push(0);
    m.extend_from_slice(payload);
    m
}

impl Signed {
    /// Signs `value` under `domain` with `key`.
    pub fn sign<T: Serialize>(domain: &str, value: &T, key: &Keypair) -> Self {
        let payload = codec::encode(value);
        let signature = match key.sign(&message(domain, &payload)) {
            Ok(s) => s,
            // Only RSA keys can fail to sign; vodmesh identities are ed25519.
            Err(e) => unreachable!("ed25519 signing cannot fail: {e}"),
        };
        Self {
            payload: ByteBuf::from(payload),
            public_key: ByteBuf::from(key.public().encode_protobuf()),
            signature: ByteBuf::from(signature),
        }
    }

    /// Checks the signature under `domain` and decodes the payload (at most `limit` bytes).
    /// Returns the signer's peer id with the value.
    pub fn verify<T: DeserializeOwned>(
        &self,
        domain: &str,
        limit: usize,
    ) -> Result<(PeerId, T), SignedError> {
        let key =
            PublicKey::try_decode_protobuf(&self.public_key).map_err(|_| SignedError::BadKey)?;
        if !key.verify(&message(domain, &self.payload), &self.signature) {
            return Err(SignedError::BadSignature);
        }
        let value = codec::decode(&self.payload, limit)?;
        Ok((key.to_peer_id(), value))
    }

    /// The signer's peer id, without checking the signature.
    pub fn signer(&self) -> Option<PeerId> {
        PublicKey::try_decode_protobuf(&self.public_key)
            .ok()
            .map(|k| k.to_peer_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_refusals() {
        let key = Keypair::generate_ed25519();
        let s = Signed::sign("test/1", &"hello".to_string(), &key);
        let (peer, v): (PeerId, String) = s.verify("test/1", 1024).unwrap();
        assert_eq!(peer, key.public().to_peer_id());
        assert_eq!(v, "hello");

        // Another domain.
        assert!(matches!(
            s.verify::<String>("other/1", 1024),
            Err(SignedError::BadSignature)
        ));
        // A changed payload.
        let mut t = s.clone();
        t.payload = ByteBuf::from(codec::encode(&"hellp".to_string()));
        assert!(matches!(
            t.verify::<String>("test/1", 1024),
            Err(SignedError::BadSignature)
        ));
        // Another key claiming the signature.
        let mut u = s.clone();
        u.public_key = ByteBuf::from(Keypair::generate_ed25519().public().encode_protobuf());
        assert!(u.verify::<String>("test/1", 1024).is_err());
        // Garbage key.
        let mut w = s;
        w.public_key = ByteBuf::from(vec![1, 2, 3]);
        assert!(matches!(
            w.verify::<String>("test/1", 1024),
            Err(SignedError::BadKey)
        ));
    }
}
