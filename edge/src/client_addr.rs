//! The client's address: the TCP peer, or behind a trusted load balancer (`TRUSTED_PROXIES`) the
//! right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Every per-address limit
//! (thread creations, messages, open sockets) keys on this, and nothing else reads the peer.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use shared::config::CidrList;

use crate::state::AppState;

/// The address a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Resolves `peer` (the TCP peer) to the client's address. Entries left of the right-most untrusted
/// one are ignored: anyone can write them. An entry that is not an address ends the walk, and the
/// last trusted hop before it is the client.
pub fn resolve(trusted: &CidrList, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted.contains(&client) {
        return client;
    }
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect::<Vec<_>>();
    for entry in entries.into_iter().rev() {
        let Ok(addr) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = addr.to_canonical();
        if !trusted.contains(&client) {
            break;
        }
    }
    client
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        // The serve loop inserts the peer into every request; without one (never in the edge
        // itself) the request counts as from the unspecified address.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |ConnectInfo(peer)| peer.ip());
        Ok(Self(resolve(&state.trusted_proxies, peer, &parts.headers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in xff {
            map.append("x-forwarded-for", value.parse().unwrap());
        }
        map
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted: CidrList = "10.0.0.0/8".parse().unwrap();
        let got = resolve(&trusted, ip("203.0.113.9"), &headers(&["198.51.100.1"]));
        assert_eq!(got, ip("203.0.113.9"));
        let none = CidrList::default();
        assert_eq!(
            resolve(&none, ip("10.0.0.1"), &headers(&["198.51.100.1"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_wins() {
        let trusted: CidrList = "10.0.0.0/8".parse().unwrap();
        let forwarded = headers(&["1.1.1.1, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(
            resolve(&trusted, ip("10.0.0.1"), &forwarded),
            ip("198.51.100.7"),
            "the spoofable left entry is ignored"
        );
        assert_eq!(
            resolve(&trusted, ip("10.0.0.1"), &headers(&[])),
            ip("10.0.0.1")
        );
        assert_eq!(
            resolve(&trusted, ip("10.0.0.1"), &headers(&["garbage, 10.0.0.3"])),
            ip("10.0.0.3")
        );
        assert_eq!(
            resolve(
                &trusted,
                ip("::ffff:10.0.0.1"),
                &headers(&["::ffff:192.0.2.1"])
            ),
            ip("192.0.2.1")
        );
    }
}
