//! Thread tokens: `base64url(HMAC-SHA256(AUTH_SECRET, thread_id))`, the only proof of ownership of a
//! thread. Every edge that shares the secret can verify any token; nothing is stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::ThreadId;

type HmacSha256 = Hmac<Sha256>;

/// Every operator token starts with this.
pub const OPERATOR_TOKEN_PREFIX: &str = "op_";

/// Signs and verifies thread tokens with one key.
#[derive(Clone)]
pub struct ThreadTokens {
    mac: HmacSha256,
    /// Threads erased (SPEC §8): their tokens no longer authorise anything.
    erased: crate::erasure::ErasedSet,
}

impl std::fmt::Debug for ThreadTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadTokens(..)")
    }
}

impl ThreadTokens {
    /// HMAC takes keys of any length; the error exists only in the trait's signature.
    pub fn new(secret: &[u8]) -> Result<Self, hmac::digest::InvalidLength> {
        Ok(Self {
            mac: HmacSha256::new_from_slice(secret)?,
            erased: crate::erasure::ErasedSet::default(),
        })
    }

    /// The erased threads whose tokens are refused.
    pub fn erased(&self) -> &crate::erasure::ErasedSet {
        &self.erased
    }

    pub fn sign(&self, thread: &ThreadId) -> String {
        let mut mac = self.mac.clone();
        mac.update(thread.as_str().as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The stored form of an operator token (SPEC §7): hex of HMAC-SHA256 keyed with the same
    /// secret, over a domain-separated input, so it can never be mistaken for a thread token and a
    /// leaked table of hashes is useless without `AUTH_SECRET`. Lookups compare these keyed hashes,
    /// never the tokens, so a lookup's timing says nothing about a token.
    pub fn operator_token_hash(&self, token: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"operator-token\0");
        mac.update(token.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// A new operator token: `op_` and 244 random bits (two v4 UUIDs), hex.
    pub fn new_operator_token() -> String {
        format!(
            "{OPERATOR_TOKEN_PREFIX}{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
    }

    /// Constant-time check of `token` against `thread`; an erased thread's token is refused.
    pub fn verify(&self, thread: &ThreadId, token: &str) -> bool {
        self.verify_signature(thread, token) && !self.erased.contains(thread)
    }

    /// Whether `token` was signed for `thread`, erased or not: for the routes that answer an
    /// erased conversation's owner `404` (it is gone) rather than `401`.
    pub fn verify_signature(&self, thread: &ThreadId, token: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        let mut mac = self.mac.clone();
        mac.update(thread.as_str().as_bytes());
        mac.verify_slice(&tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_verifies_for_its_thread_only() {
        let tokens = ThreadTokens::new(b"secret").unwrap();
        let thread = ThreadId::parse("t1").unwrap();
        let other = ThreadId::parse("t2").unwrap();
        let token = tokens.sign(&thread);
        assert!(tokens.verify(&thread, &token));
        assert!(!tokens.verify(&other, &token));
        assert!(!tokens.verify(&thread, ""));
        assert!(!tokens.verify(&thread, "not base64 !"));
        assert!(!tokens.verify(&thread, &token[..token.len() - 2]));
        tokens.erased().insert("t1");
        assert!(!tokens.verify(&thread, &token), "an erased thread's token");
    }

    #[test]
    fn tokens_depend_on_the_secret() {
        let thread = ThreadId::parse("t1").unwrap();
        let a = ThreadTokens::new(b"one").unwrap();
        let b = ThreadTokens::new(b"two").unwrap();
        assert!(!b.verify(&thread, &a.sign(&thread)));
        assert_eq!(
            a.sign(&thread),
            ThreadTokens::new(b"one").unwrap().sign(&thread)
        );
    }
}
