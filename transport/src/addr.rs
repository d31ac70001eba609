//! Transport addresses: `tcp://HOST:PORT`, `shm://NAME`, `rdma://HOST:PORT[?dev=rxe0&port=1&gid=1]`.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use crate::error::TransportError;

const EXPECTED: &str = "tcp://HOST:PORT, shm://NAME or rdma://HOST:PORT[?dev=NAME&port=N&gid=N]";

/// Which transport an address is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Tcp,
    Shm,
    Rdma,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Shm => "shm",
            TransportKind::Rdma => "rdma",
        })
    }
}

/// RDMA device selection carried by an `rdma://` address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RdmaOptions {
    /// Device name (e.g. `rxe0`); `None` picks the first active device.
    pub dev: Option<String>,
    /// Port number (1-based); `None` means 1.
    pub port: Option<u8>,
    /// GID index; `None` picks a RoCE v2 GID automatically.
    pub gid: Option<u8>,
}

/// A parsed transport address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP endpoint.
    Tcp(SocketAddr),
    /// An intra-host shared-memory endpoint, by name.
    Shm(String),
    /// An RDMA endpoint: the TCP side channel's address and device options.
    Rdma(SocketAddr, RdmaOptions),
}

impl Address {
    /// The transport this address is for.
    pub fn kind(&self) -> TransportKind {
        match self {
            Address::Tcp(_) => TransportKind::Tcp,
            Address::Shm(_) => TransportKind::Shm,
            Address::Rdma(..) => TransportKind::Rdma,
        }
    }

    /// The socket address of a tcp or rdma address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Address::Tcp(a) | Address::Rdma(a, _) => Some(*a),
            Address::Shm(_) => None,
        }
    }
}

fn invalid(addr: &str, reason: impl Into<String>) -> TransportError {
    TransportError::InvalidAddress {
        addr: addr.to_string(),
        reason: reason.into(),
        expected: EXPECTED,
    }
}

fn parse_host_port(full: &str, hp: &str) -> Result<SocketAddr, TransportError> {
    if hp.is_empty() {
        return Err(invalid(full, "missing HOST:PORT"));
    }
    if let Ok(sa) = SocketAddr::from_str(hp) {
        return Ok(sa);
    }
    let (host, port) = hp
        .rsplit_once(':')
        .ok_or_else(|| invalid(full, "missing :PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(full, format!("bad port {port:?}")))?;
    if host.is_empty() {
        return Err(invalid(full, "missing HOST"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = IpAddr::from_str(host) {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| invalid(full, format!("cannot resolve {host:?}: {e}")))?
        .next()
        .ok_or_else(|| invalid(full, format!("{host:?} resolves to no address")))
}

impl FromStr for Address {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Address, TransportError> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| invalid(s, "missing scheme"))?;
        match scheme {
            "tcp" => Ok(Address::Tcp(parse_host_port(s, rest)?)),
            "shm" => {
                let ok = !rest.is_empty()
                    && rest.len() <= 64
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    && rest != "."
                    && rest != "..";
                if !ok {
                    return Err(invalid(
                        s,
                        "shm NAME must be 1-64 characters of [A-Za-z0-9._-]",
                    ));
                }
                Ok(Address::Shm(rest.to_string()))
            }
            "rdma" => {
                let (hp, query) = match rest.split_once('?') {
                    Some((hp, q)) => (hp, Some(q)),
                    None => (rest, None),
                };
                let sa = parse_host_port(s, hp)?;
                let mut o = RdmaOptions::default();
                for kv in query.into_iter().flat_map(|q| q.split('&')) {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| invalid(s, format!("bad option {kv:?}")))?;
                    match k {
                        "dev" if !v.is_empty() => o.dev = Some(v.to_string()),
                        "port" => {
                            o.port = Some(
                                v.parse()
                                    .ok()
                                    .filter(|p| *p > 0)
                                    .ok_or_else(|| invalid(s, format!("bad port number {v:?}")))?,
                            )
                        }
                        "gid" => {
                            o.gid = Some(
                                v.parse()
                                    .map_err(|_| invalid(s, format!("bad gid index {v:?}")))?,
                            )
                        }
                        _ => return Err(invalid(s, format!("unknown option {kv:?}"))),
                    }
                }
                Ok(Address::Rdma(sa, o))
            }
            other => Err(invalid(s, format!("unknown scheme {other:?}"))),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "tcp://{a}"),
            Address::Shm(n) => write!(f, "shm://{n}"),
            Address::Rdma(a, o) => {
                write!(f, "rdma://{a}")?;
                let mut sep = '?';
                if let Some(d) = &o.dev {
                    write!(f, "{sep}dev={d}")?;
                    sep = '&';
                }
                if let Some(p) = o.port {
                    write!(f, "{sep}port={p}")?;
                    sep = '&';
                }
                if let Some(g) = o.gid {
                    write!(f, "{sep}gid={g}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        for s in [
            "tcp://127.0.0.1:6800",
            "tcp://[::1]:3300",
            "shm://osd.0-public",
            "rdma://10.0.0.1:7000",
            "rdma://127.0.0.1:7000?dev=rxe0&port=1&gid=1",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        let a: Address = "tcp://localhost:80".parse().unwrap();
        assert_eq!(a.socket_addr().unwrap().port(), 80);
        assert_eq!(
            "rdma://127.0.0.1:1?gid=3".parse::<Address>().unwrap(),
            Address::Rdma(
                "127.0.0.1:1".parse().unwrap(),
                RdmaOptions {
                    gid: Some(3),
                    ..Default::default()
                }
            )
        );
    }

    #[test]
    fn malformed_addresses_quote_the_input_and_the_expected_form() {
        for s in [
            "127.0.0.1:80",
            "udp://1.2.3.4:5",
            "tcp://1.2.3.4",
            "tcp://1.2.3.4:99999",
            "tcp://:80",
            "shm://",
            "shm://a/b",
            "shm://..",
            "rdma://1.2.3.4:5?dev",
            "rdma://1.2.3.4:5?port=0",
            "rdma://1.2.3.4:5?gid=x",
            "rdma://1.2.3.4:5?color=red",
        ] {
            let e = s.parse::<Address>().unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("{s:?}")), "{msg}");
            assert!(msg.contains("expected tcp://HOST:PORT"), "{msg}");
        }
    }
}
