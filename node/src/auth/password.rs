//! Password hashing: argon2id, stored as PHC strings
//! (`$argon2id$v=19$m=...,t=...,p=...$<salt>$<hash>`).
//!
//! The parameters travel inside each stored hash, so raising [`HashParams`] later only affects
//! new passwords, and old ones still verify.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Longest password accepted, in bytes. Argon2 takes any length; this bounds the work a
/// request can ask for and the size of a login message.
pub const MAX_PASSWORD: usize = 1024;
/// Shortest password accepted for a new user, in characters.
pub const MIN_PASSWORD: usize = 8;

/// argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashParams {
    /// Memory, in KiB.
    pub m_cost_kib: u32,
    /// Passes over the memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl HashParams {
    /// The default: 19 MiB, 2 passes, 1 lane (OWASP's minimum recommendation for argon2id),
    /// a few tens of milliseconds a hash on one core.
    pub const MODERATE: Self = Self {
        m_cost_kib: 19 * 1024,
        t_cost: 2,
        p_cost: 1,
    };

    /// Cheap parameters for tests only (64 KiB, 1 pass): still argon2id, but no protection
    /// against offline guessing. Never configure a real server with these.
    pub const INSECURE_FOR_TESTS: Self = Self {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    fn hasher(&self) -> Result<Argon2<'static>, HashError> {
        let params = Params::new(self.m_cost_kib, self.t_cost, self.p_cost, None)
            .map_err(|e| HashError(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for HashParams {
    fn default() -> Self {
        Self::MODERATE
    }
}

/// argon2 refused its parameters or a stored hash is not a PHC string.
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// Hashes `password` with a fresh random salt; returns the PHC string to store.
pub fn hash(password: &str, params: HashParams) -> Result<String, HashError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| HashError(e.to_string()))?;
    let hash = params
        .hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| HashError(e.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the stored PHC string `phc` (with the parameters stored in it).
pub fn verify(password: &str, phc: &str) -> Result<bool, HashError> {
    let parsed = PasswordHash::new(phc).map_err(|e| HashError(e.to_string()))?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(HashError(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moderate_params_make_a_real_argon2id_hash() {
        let h = hash("correct horse", HashParams::MODERATE).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("correct horse", &h).unwrap());
        assert!(!verify("correct horsf", &h).unwrap());
    }

    #[test]
    fn salts_differ_and_params_travel_with_the_hash() {
        let a = hash("pw-pw-pw-pw", HashParams::INSECURE_FOR_TESTS).unwrap();
        let b = hash("pw-pw-pw-pw", HashParams::INSECURE_FOR_TESTS).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
        assert!(verify("pw-pw-pw-pw", &a).unwrap());
        assert!(verify("not a phc string", "").is_err());
    }
}
