//! The one reading of a socket address the emperor binds or connects to (command socket,
//! on-demand sockets, the stats socket, the fork-server path).
//!
//! uWSGI's forms: `:PORT` (a port on the caller's default host), `HOST:PORT`, `[V6]:PORT`, and
//! anything else is a unix socket path, relative to the emperor's working directory. What a
//! bare `:PORT` binds is the caller's choice ([`LOCALHOST`] for the command socket, whose
//! senders cannot be identified over UDP; [`ANY`] for on-demand and stats sockets, as uWSGI).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// Longest unix socket path (`sun_path` holds 108 bytes including the terminating NUL).
pub const MAX_UNIX_PATH: usize = 107;
/// A bare `:PORT` on 127.0.0.1.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A bare `:PORT` on every IPv4 address.
pub const ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Why an address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    /// `HOST:PORT` that does not parse or resolve.
    #[error(
        "bad address {addr}: {source} (use :PORT, HOST:PORT, [IPV6]:PORT or a unix socket path)"
    )]
    Resolve {
        /// The address as given.
        addr: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// `HOST:PORT` whose host resolves to no address.
    #[error("bad address {addr}: it resolves to nothing")]
    Unresolved {
        /// The address as given.
        addr: String,
    },
    /// A unix socket path longer than a socket address holds.
    #[error(
        "unix socket path {} is {len} bytes long, but a unix socket address holds at most \
         {MAX_UNIX_PATH}: use a shorter path (or a TCP address)",
        path.display()
    )]
    TooLong {
        /// The path (joined to the working directory).
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
}

/// An address to bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindAddr {
    /// TCP or UDP.
    Inet(SocketAddr),
    /// A unix socket path (absolute, or joined to the working directory).
    Unix(PathBuf),
}

/// True for `HOST:PORT`, `:PORT` and `[V6]:PORT`; false for a unix path (one that starts with
/// `/` or `.`, or has no `:`).
pub fn is_inet(addr: &str) -> bool {
    addr.contains(':') && !addr.starts_with('/') && !addr.starts_with('.')
}

/// Reads `addr`: an internet address (a bare `:PORT` on `bare_port_host`) or a unix path
/// relative to `cwd`, at most [`MAX_UNIX_PATH`] bytes long.
pub fn parse(addr: &str, cwd: &Path, bare_port_host: IpAddr) -> Result<BindAddr, AddrError> {
    if is_inet(addr) {
        inet(addr, bare_port_host).map(BindAddr::Inet)
    } else {
        unix(Path::new(addr), cwd).map(BindAddr::Unix)
    }
}

/// Resolves `HOST:PORT`, `[V6]:PORT` or `:PORT` (on `bare_port_host`) to its first address.
pub fn inet(addr: &str, bare_port_host: IpAddr) -> Result<SocketAddr, AddrError> {
    let full = match (addr.strip_prefix(':'), bare_port_host) {
        (Some(port), IpAddr::V4(h)) => format!("{h}:{port}"),
        (Some(port), IpAddr::V6(h)) => format!("[{h}]:{port}"),
        (None, _) => addr.to_string(),
    };
    full.to_socket_addrs()
        .map_err(|source| AddrError::Resolve {
            addr: addr.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| AddrError::Unresolved {
            addr: addr.to_string(),
        })
}

/// `path` relative to `cwd`, checked to fit a unix socket address.
pub fn unix(path: &Path, cwd: &Path) -> Result<PathBuf, AddrError> {
    let path = unix_path(path, cwd);
    let len = path.as_os_str().len();
    if len > MAX_UNIX_PATH {
        return Err(AddrError::TooLong { path, len });
    }
    Ok(path)
}

/// `path` relative to `cwd` (unchanged when absolute), without a length check: for a path
/// that is connected to rather than bound, where the connect reports the error.
pub fn unix_path(path: &Path, cwd: &Path) -> PathBuf {
    cwd.join(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn which_forms_are_internet_addresses() {
        for a in [":80", "127.0.0.1:80", "[::1]:80", "localhost:9000"] {
            assert!(is_inet(a), "{a}");
        }
        for a in ["/run/a.sock", "./a:b.sock", "a.sock", "../x:1"] {
            assert!(!is_inet(a), "{a}");
        }
    }

    #[test]
    fn a_bare_port_binds_the_callers_host() {
        let cwd = Path::new("/");
        assert_eq!(
            parse(":3031", cwd, LOCALHOST).unwrap(),
            BindAddr::Inet("127.0.0.1:3031".parse().unwrap())
        );
        assert_eq!(
            parse(":3031", cwd, ANY).unwrap(),
            BindAddr::Inet("0.0.0.0:3031".parse().unwrap())
        );
        assert_eq!(
            inet(":7", IpAddr::V6(Ipv6Addr::LOCALHOST)).unwrap(),
            "[::1]:7".parse().unwrap()
        );
    }

    #[test]
    fn host_port_and_v6() {
        assert_eq!(
            inet("10.1.2.3:99", ANY).unwrap(),
            "10.1.2.3:99".parse().unwrap()
        );
        let v6 = inet("[::1]:8000", ANY).unwrap();
        assert!(v6.is_ipv6());
        assert_eq!(v6.port(), 8000);
    }

    #[test]
    fn bad_addresses_say_which_and_what_to_use() {
        let e = inet("127.0.0.1:notaport", ANY).unwrap_err();
        assert!(matches!(e, AddrError::Resolve { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("127.0.0.1:notaport"), "{msg}");
        assert!(msg.contains(":PORT, HOST:PORT"), "{msg}");
        assert!(inet(":99999", ANY).is_err());
        assert!(inet("no.such.host.invalid:80", ANY).is_err());
    }

    #[test]
    fn unix_paths_are_relative_to_the_cwd_and_checked_for_length() {
        let cwd = Path::new("/srv/app");
        assert_eq!(
            parse("run/a.sock", cwd, ANY).unwrap(),
            BindAddr::Unix(PathBuf::from("/srv/app/run/a.sock"))
        );
        assert_eq!(
            parse("/tmp/b.sock", cwd, ANY).unwrap(),
            BindAddr::Unix(PathBuf::from("/tmp/b.sock"))
        );
        let long = format!("/tmp/{}.sock", "x".repeat(120));
        let e = parse(&long, cwd, ANY).unwrap_err();
        assert!(matches!(e, AddrError::TooLong { len: 130, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("at most 107"), "{msg}");
        assert!(msg.contains("use a shorter path"), "{msg}");
        let fits = format!("/{}", "y".repeat(MAX_UNIX_PATH - 1));
        assert!(parse(&fits, cwd, ANY).is_ok());
        // A path that is only connected to is not checked here.
        assert_eq!(
            unix_path(Path::new(&long), cwd),
            PathBuf::from(&long),
            "absolute stays"
        );
        assert_eq!(
            unix_path(Path::new("fs.sock"), cwd),
            PathBuf::from("/srv/app/fs.sock")
        );
    }
}
