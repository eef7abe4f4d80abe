//! The HTTP shim's side of [`crate::auth`]: tokens as HTTP presents them
//! (`Authorization: Bearer TOKEN`, or the password of HTTP basic auth,
//! which is what Nix sends from a netrc file) and refusals as HTTP
//! responses. Uploads over HTTP always need the upload token.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use data_encoding::BASE64;

use crate::auth::{bearer, Denied, Tokens};

fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = bearer(value) {
        return Some(t.to_vec());
    }
    let b64 = value.strip_prefix("Basic ")?;
    let decoded = BASE64.decode(b64.trim().as_bytes()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            // 401 asks for basic auth, so curl-based clients send their
            // netrc credentials.
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

/// `Ok` if reads are public or the request presents the read token.
pub fn check(headers: &HeaderMap, tokens: &Tokens) -> Result<(), Denied> {
    tokens.check_read(presented(headers).as_deref())
}

/// `Ok` if the request presents the upload token (none configured: uploads
/// are refused).
pub fn check_write(headers: &HeaderMap, tokens: &Tokens) -> Result<(), Denied> {
    tokens.check_write(presented(headers).as_deref(), false)
}
