//! Single-use, expiring tokens that name a cached streaming request in its URL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::api::{PortForwardRequest, RequestError};
use crate::remotecommand::Command;

/// A request waiting for its client to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    /// An exec or an attach: served by remotecommand.
    Command(Command),
    PortForward(PortForwardRequest),
}

impl Pending {
    pub(crate) fn path(&self) -> &'static str {
        match self {
            Pending::Command(Command::Exec(_)) => "exec",
            Pending::Command(Command::Attach(_)) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// Bytes of randomness per token (encoded as 43 URL-safe characters).
const TOKEN_BYTES: usize = 32;

#[derive(Debug)]
pub(crate) struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Pending, Instant)>>,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `req` under a fresh unguessable token and returns the token.
    pub(crate) fn insert(&self, req: Pending) -> Result<String, RequestError> {
        let mut raw = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut raw).map_err(|e| RequestError::Random(e.to_string()))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Expired entries are dropped here, so the map never outgrows a minute of requests.
        entries.retain(|_, (_, expires)| *expires > now);
        entries.insert(token.clone(), (req, now + self.ttl));
        Ok(token)
    }

    /// Removes and returns the request for `token` if it exists, has not expired
    /// and is of the kind named by the URL path.
    pub(crate) fn take(&self, token: &str, path: &str) -> Option<Pending> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (req, expires) = entries.remove(token)?;
        if expires <= Instant::now() || req.path() != path {
            return None;
        }
        Some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Pending {
        Pending::PortForward(PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports: vec![],
        })
    }

    #[test]
    fn tokens_are_single_use() {
        let c = TokenCache::new(Duration::from_secs(60));
        let t = c.insert(pf()).unwrap();
        assert_eq!(t.len(), 43);
        assert_eq!(c.take(&t, "portforward"), Some(pf()));
        assert_eq!(c.take(&t, "portforward"), None);
    }

    #[test]
    fn tokens_differ_and_are_url_safe() {
        let c = TokenCache::new(Duration::from_secs(60));
        let a = c.insert(pf()).unwrap();
        let b = c.insert(pf()).unwrap();
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        );
    }

    #[test]
    fn expired_tokens_are_unknown() {
        let c = TokenCache::new(Duration::from_millis(1));
        let t = c.insert(pf()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.take(&t, "portforward"), None);
    }

    #[test]
    fn a_token_only_works_on_its_own_path() {
        let c = TokenCache::new(Duration::from_secs(60));
        let t = c.insert(pf()).unwrap();
        assert_eq!(c.take(&t, "exec"), None);
        // ...and the wrong path burned it.
        assert_eq!(c.take(&t, "portforward"), None);
    }
}
