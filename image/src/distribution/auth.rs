//! Credentials and the registry's auth challenges: CRI's `AuthConfig` as [`Auth`],
//! scoped to the registry it belongs to, and `WWW-Authenticate` parsing.

use std::collections::HashMap;

use base64::Engine as _;

/// Credentials for a pull, as CRI's `AuthConfig` carries them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// A bearer token to send as is.
    pub registry_token: String,
    /// An OAuth2 refresh token, exchanged at the registry's token service for an
    /// access token (`grant_type=refresh_token`).
    pub identity_token: String,
    /// The registry these credentials belong to (CRI's `AuthConfig.server_address`):
    /// they are never sent anywhere else. Empty: the registry the image names.
    pub server_address: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log secrets.
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("has_password", &!self.password.is_empty())
            .field("has_auth", &!self.auth.is_empty())
            .field("has_registry_token", &!self.registry_token.is_empty())
            .field("has_identity_token", &!self.identity_token.is_empty())
            .field("server_address", &self.server_address)
            .finish()
    }
}

impl Auth {
    /// No credentials.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Username and password.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
            ..Self::default()
        }
    }

    /// Whether there is anything to authenticate with.
    pub fn is_anonymous(&self) -> bool {
        self.username.is_empty()
            && self.password.is_empty()
            && self.auth.is_empty()
            && self.registry_token.is_empty()
            && self.identity_token.is_empty()
    }

    /// These credentials if they belong to registry `host` (as a reference names it,
    /// e.g. `docker.io`, `localhost:5000`), else none: credentials kubelet found for
    /// one registry must not be handed to another.
    pub fn scoped_to(&self, host: &str) -> Auth {
        if self.server_address.trim().is_empty()
            || canonical_registry(&self.server_address) == canonical_registry(host)
        {
            self.clone()
        } else {
            Auth::anonymous()
        }
    }

    pub(super) fn user_password(&self) -> Option<(String, String)> {
        if !self.username.is_empty() || !self.password.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        if !self.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (u, p) = text.split_once(':')?;
            return Some((u.to_owned(), p.to_owned()));
        }
        None
    }
}

/// `host[:port]` of a registry address as kubelet or a docker config writes it
/// (`https://index.docker.io/v1/`, `registry.example:5000`, `docker.io`), lowercased,
/// with Docker Hub's aliases folded into `docker.io`.
fn canonical_registry(address: &str) -> String {
    let a = address.trim();
    let a = a.split_once("://").map_or(a, |(_, rest)| rest);
    let host = a.split('/').next().unwrap_or("").to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => host,
    }
}

pub(super) fn basic_header(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A parsed `WWW-Authenticate` header: scheme (lowercased) and its parameters.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Challenge {
    pub(super) scheme: String,
    pub(super) params: HashMap<String, String>,
}

impl Challenge {
    pub(super) fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = match header.split_once(' ') {
            Some((s, r)) => (s, r),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = HashMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.peek() {
                    if *c == ',' {
                        break;
                    }
                    value.push(*c);
                    chars.next();
                }
                value = value.trim().to_owned();
            }
            params.insert(key.trim().to_ascii_lowercase(), value);
        }
        Some(Self {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_params() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["service"], "registry.example");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
    }

    #[test]
    fn basic_challenge() {
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        assert!(Challenge::parse("").is_none());
    }

    #[test]
    fn credentials_from_auth_field_and_debug_hides_secrets() {
        let a = Auth {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:w"),
            ..Auth::default()
        };
        assert_eq!(a.user_password(), Some(("u".into(), "p:w".into())));
        assert_eq!(Auth::anonymous().user_password(), None);
        let b = Auth::basic("me", "secret");
        assert!(!format!("{b:?}").contains("secret"));
        assert_eq!(basic_header("me", "secret"), "Basic bWU6c2VjcmV0");
    }

    #[test]
    fn credentials_are_scoped_to_their_registry() {
        let hub = Auth {
            username: "u".into(),
            password: "p".into(),
            server_address: "https://index.docker.io/v1/".into(),
            ..Auth::default()
        };
        assert_eq!(hub.scoped_to("docker.io"), hub);
        assert!(hub.scoped_to("ghcr.io").is_anonymous());
        let local = Auth {
            registry_token: "t".into(),
            server_address: "http://127.0.0.1:5000/v2/".into(),
            ..Auth::default()
        };
        assert_eq!(local.scoped_to("127.0.0.1:5000"), local);
        assert!(local.scoped_to("127.0.0.1:5001").is_anonymous());
        // No server address: the credentials are for whatever registry is pulled from.
        let any = Auth::basic("u", "p");
        assert_eq!(any.scoped_to("registry.example"), any);
    }
}
