//! Tokens: writes need the upload token, reads the read token if one is
//! set. Accepted as `Authorization: Bearer TOKEN` and as the password of
//! HTTP basic auth (what Nix sends from a netrc file).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use data_encoding::BASE64;

/// Whether a presented token is the configured one, in time that depends
/// on neither's contents nor length: both are hashed (BLAKE3), and
/// `blake3::Hash` compares in constant time.
pub fn same_token(presented: &[u8], configured: &[u8]) -> bool {
    blake3::hash(presented) == blake3::hash(configured)
}

fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = value.strip_prefix("Bearer ") {
        return Some(t.trim().as_bytes().to_vec());
    }
    let b64 = value.strip_prefix("Basic ")?;
    let decoded = BASE64.decode(b64.trim().as_bytes()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// Why a request was turned away.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No or a wrong token: 401, asking for basic auth so curl-based
    /// clients send their netrc credentials.
    Unauthorized,
    /// No upload token is configured: uploads are off (403).
    UploadsDisabled,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"lazix\""),
                )],
                "a valid token is required\n",
            )
                .into_response(),
            Denied::UploadsDisabled => (
                StatusCode::FORBIDDEN,
                "uploads are disabled: start the server with --upload-token-file\n",
            )
                .into_response(),
        }
    }
}

/// `Ok` if `required` is unset or presented.
pub fn check(headers: &HeaderMap, required: Option<&str>) -> Result<(), Denied> {
    let Some(token) = required else {
        return Ok(());
    };
    match presented(headers) {
        Some(p) if same_token(&p, token.as_bytes()) => Ok(()),
        _ => Err(Denied::Unauthorized),
    }
}

/// Uploads are refused outright when no upload token is configured.
pub fn check_write(headers: &HeaderMap, token: Option<&str>) -> Result<(), Denied> {
    match token {
        None => Err(Denied::UploadsDisabled),
        Some(t) => check(headers, Some(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_exactly() {
        assert!(same_token(b"secret", b"secret"));
        for other in [&b""[..], b"secre", b"secret ", b"Secret", b"secretsecret"] {
            assert!(!same_token(other, b"secret"), "{other:?}");
        }
    }
}
