//! Who may read and write: one rule for both front ends, the gRPC services
//! and the HTTP binary-cache shim. Writes need the upload token; reads
//! need the read token if one is set. Tokens are compared by hash, in time
//! that does not depend on their contents.
//!
//! Without an upload token, the HTTP shim refuses uploads outright; the
//! gRPC services accept writes only on a loopback listener (the embedded
//! default, where `lazix push` works with no setup) and refuse them on any
//! other address: a server reachable from the network never takes writes
//! from anyone.

/// Whether a presented token is the configured one, in time that depends
/// on neither's contents nor length: both are hashed (BLAKE3), and
/// `blake3::Hash` compares in constant time.
pub fn same_token(presented: &[u8], configured: &[u8]) -> bool {
    blake3::hash(presented) == blake3::hash(configured)
}

/// The tokens a server was started with.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    /// What writes must present; `None`: see [`Tokens::check_write`].
    pub upload: Option<String>,
    /// What reads must present; `None`: reads are public.
    pub read: Option<String>,
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No or a wrong token.
    Unauthorized,
    /// No upload token is configured and this front end takes no writes
    /// without one.
    UploadsDisabled,
}

impl Tokens {
    /// `Ok` if reads are public or `presented` is the read token. The
    /// upload token reads too (an uploader checks what it wrote).
    pub fn check_read(&self, presented: Option<&[u8]>) -> Result<(), Denied> {
        let Some(read) = &self.read else {
            return Ok(());
        };
        match presented {
            Some(p) if same_token(p, read.as_bytes()) => Ok(()),
            Some(p)
                if self
                    .upload
                    .as_ref()
                    .is_some_and(|u| same_token(p, u.as_bytes())) =>
            {
                Ok(())
            }
            _ => Err(Denied::Unauthorized),
        }
    }

    /// `Ok` if `presented` is the upload token; with no upload token
    /// configured, `Ok` only if `tokenless_writes` (else
    /// [`Denied::UploadsDisabled`]).
    pub fn check_write(
        &self,
        presented: Option<&[u8]>,
        tokenless_writes: bool,
    ) -> Result<(), Denied> {
        match &self.upload {
            None if tokenless_writes => Ok(()),
            None => Err(Denied::UploadsDisabled),
            Some(token) => match presented {
                Some(p) if same_token(p, token.as_bytes()) => Ok(()),
                _ => Err(Denied::Unauthorized),
            },
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` value.
pub fn bearer(value: &str) -> Option<&[u8]> {
    value.strip_prefix("Bearer ").map(|t| t.trim().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_need_the_upload_token_and_reads_the_read_token() {
        let tokens = Tokens {
            upload: Some("up".into()),
            read: Some("rd".into()),
        };
        assert_eq!(tokens.check_write(Some(b"up"), false), Ok(()));
        for wrong in [None, Some(&b"rd"[..]), Some(b"u"), Some(b"")] {
            assert_eq!(tokens.check_write(wrong, true), Err(Denied::Unauthorized));
        }
        assert_eq!(tokens.check_read(Some(b"rd")), Ok(()));
        assert_eq!(
            tokens.check_read(Some(b"up")),
            Ok(()),
            "uploaders read back"
        );
        assert_eq!(tokens.check_read(None), Err(Denied::Unauthorized));
        assert_eq!(tokens.check_read(Some(b"r")), Err(Denied::Unauthorized));
        let open = Tokens::default();
        assert_eq!(open.check_read(None), Ok(()));
        assert_eq!(open.check_write(None, true), Ok(()));
        assert_eq!(
            open.check_write(Some(b"x"), false),
            Err(Denied::UploadsDisabled)
        );
        assert_eq!(bearer("Bearer abc "), Some(&b"abc"[..]));
        assert_eq!(bearer("Basic abc"), None);
    }

    #[test]
    fn tokens_match_only_exactly() {
        assert!(same_token(b"secret", b"secret"));
        for other in [&b""[..], b"secre", b"secret ", b"Secret", b"secretsecret"] {
            assert!(!same_token(other, b"secret"), "{other:?}");
        }
    }
}
