//! Where the gRPC server listens: a TCP address, or a Unix socket for a
//! server and its clients on one machine (`unix:///run/lazix.sock`).
//!
//! On a Unix socket, who may connect is decided by the socket file's
//! permissions (created with `--socket-mode`, 0660 by default, so the
//! owner and the file's group) and its folder's, as for any local daemon;
//! the gRPC services then treat it as loopback (writes without a token).
//! A socket file left by a server that died is replaced; one a live server
//! still answers on is refused.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The prefix of a Unix socket address.
pub const UNIX_SCHEME: &str = "unix://";

/// A gRPC listen address as `--grpc` takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// `HOST:PORT`.
    Tcp(SocketAddr),
    /// `unix:///absolute/path`.
    Unix(PathBuf),
}

/// Why a listen address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Neither `HOST:PORT` nor `unix:///absolute/path`.
    #[error("invalid listen address {0:?}: expected HOST:PORT or unix:///absolute/path")]
    BadAddress(String),
    /// Something else already listens on the socket.
    #[error("{0}: a server is already listening on this socket")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
    /// Binding or setting permissions failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl std::str::FromStr for ListenAddr {
    type Err = ListenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix(UNIX_SCHEME) {
            let path = PathBuf::from(path);
            if !path.is_absolute() || path.file_name().is_none() {
                return Err(ListenError::BadAddress(s.to_string()));
            }
            return Ok(Self::Unix(path));
        }
        s.parse()
            .map(Self::Tcp)
            .map_err(|_| ListenError::BadAddress(s.to_string()))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "{UNIX_SCHEME}{}", p.display()),
        }
    }
}

/// A bound gRPC listener.
#[derive(Debug)]
pub enum Listener {
    /// On TCP.
    Tcp(tokio::net::TcpListener),
    /// On a Unix socket; the file is removed when this is dropped.
    Unix(tokio::net::UnixListener, SocketFile),
}

/// A socket file this server created, removed on drop.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    /// Binds `addr`; a Unix socket gets `socket_mode` as its permissions.
    pub async fn bind(addr: &ListenAddr, socket_mode: u32) -> Result<Self, ListenError> {
        match addr {
            ListenAddr::Tcp(a) => tokio::net::TcpListener::bind(a)
                .await
                .map(Self::Tcp)
                .map_err(|e| ListenError::Io(a.to_string(), e)),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).await?;
                let io = |e| ListenError::Io(path.display().to_string(), e);
                let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
                let file = SocketFile(path.clone());
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))
                    .map_err(io)?;
                Ok(Self::Unix(listener, file))
            }
        }
    }

    /// Whether clients on this listener are on this machine (writes are
    /// then taken without a token).
    pub fn is_local(&self) -> bool {
        match self {
            Self::Tcp(l) => l.local_addr().is_ok_and(|a| a.ip().is_loopback()),
            Self::Unix(..) => true,
        }
    }

    /// The address actually bound (the port chosen for `:0`).
    pub fn local_addr(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string()),
            Self::Unix(_, file) => format!("{UNIX_SCHEME}{}", file.0.display()),
        }
    }
}

/// Removes a socket file no server answers on any more; refuses a live
/// one or a path that is not a socket.
async fn remove_stale_socket(path: &Path) -> Result<(), ListenError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ListenError::Io(path.display().to_string(), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket(path.to_path_buf()));
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(ListenError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|e| ListenError::Io(path.display().to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_tcp_or_unix() {
        assert_eq!(
            "127.0.0.1:9721".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:9721".parse().unwrap())
        );
        assert_eq!(
            "unix:///run/lazix.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/lazix.sock".into())
        );
        for bad in [
            "unix://run.sock",
            "unix:///",
            "localhost",
            "grpc://1.2.3.4:5",
            "",
        ] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
        assert_eq!(
            ListenAddr::Unix("/a/b.sock".into()).to_string(),
            "unix:///a/b.sock"
        );
    }

    #[tokio::test]
    async fn a_socket_gets_its_mode_replaces_a_stale_one_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let addr = ListenAddr::Unix(path.clone());
        let first = Listener::bind(&addr, 0o600).await.unwrap();
        assert!(first.is_local());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            Listener::bind(&addr, 0o600).await,
            Err(ListenError::InUse(_))
        ));
        // A server that died without removing its socket.
        let Listener::Unix(listener, file) = first else {
            panic!("not a unix listener")
        };
        std::mem::forget(file);
        drop(listener);
        let again = Listener::bind(&addr, 0o660).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(again);
        assert!(!path.exists(), "the socket file is removed on drop");
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            Listener::bind(&addr, 0o660).await,
            Err(ListenError::NotASocket(_))
        ));
    }
}
