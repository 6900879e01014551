//! HTTP calls of imported (OpenAPI) tools, with the guards an agent's tool calls need:
//! - only hosts that resolve to public addresses, unless `TOOL_HOSTS_ALLOW` lists them (no SSRF:
//!   no private, loopback, link-local or otherwise special address; no redirects; the
//!   connection goes to the address that was checked, so DNS cannot change it in between);
//! - a timeout per request; retries with backoff only for idempotent methods;
//! - an `Idempotency-Key` on every write (the approval's interrupt id when there is one), so a
//!   call repeated after a crash is recognisable by the server;
//! - responses cut to a bound before they reach the model.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use super::ToolError;

/// Hosts a tool may call even though they resolve to a non-public address: `host` or
/// `host:port`, comma-separated (`TOOL_HOSTS_ALLOW`).
#[derive(Debug, Clone, Default)]
pub struct HostAllowList {
    entries: Vec<String>,
}

impl HostAllowList {
    pub fn parse(raw: &str) -> Self {
        Self {
            entries: raw
                .split(',')
                .map(|entry| entry.trim().to_ascii_lowercase())
                .filter(|entry| !entry.is_empty())
                .collect(),
        }
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let with_port = format!("{host}:{port}");
        self.entries
            .iter()
            .any(|entry| *entry == host || *entry == with_port)
    }
}

/// How imported tools call out.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub allow: HostAllowList,
}

/// One request, built from a tool's validated arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub json_body: Option<Value>,
}

/// Whether a request may be sent again without changing its effect (RFC 9110 §9.2.2).
fn idempotent(method: &str) -> bool {
    matches!(
        method.to_ascii_uppercase().as_str(),
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"
    )
}

/// Whether an address is an ordinary public one: not loopback, private, link-local, shared
/// (CGNAT), unspecified, broadcast, multicast, documentation, unique-local or otherwise special.
///
/// IPv6 is judged by what a connection to it reaches:
/// - an IPv4-mapped address (`::ffff:a.b.c.d`) and the NAT64 well-known prefix
///   (`64:ff9b::a.b.c.d`, which DNS64 hands out for IPv4-only hosts) are judged by the IPv4
///   address they embed;
/// - everything else must be global unicast (`2000::/3`) and outside the special ranges in it
///   (6to4 `2002::/16`, the IETF protocol block `2001::/23` with Teredo `2001::/32`,
///   documentation `2001:db8::/32` and `3fff::/20`). So IPv4-compatible `::a.b.c.d`, local-use
///   NAT64 `64:ff9b:1::/48`, site-local `fec0::/10`, unique-local, link-local and the rest are
///   refused outright, whatever they embed.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

/// The IPv4 address a connection to `ip` really reaches, where that is its defined meaning:
/// IPv4-mapped `::ffff:0:0/96` and NAT64 `64:ff9b::/96` (RFC 6052).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let [.., a, b, c, d] = ip.octets();
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff, ..] | [0x64, 0xff9b, 0, 0, 0, 0, ..] => {
            Some(Ipv4Addr::new(a, b, c, d))
        }
        _ => None,
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0)
        // The 6to4 relay anycast block (RFC 7526).
        || (a == 192 && b == 88 && c == 99)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let [first, second, ..] = ip.segments();
    let global_unicast = (first & 0xe000) == 0x2000;
    global_unicast
        // 6to4: the deprecated tunnel to an IPv4 address (RFC 7526).
        && first != 0x2002
        // IETF protocol assignments (RFC 2928): Teredo 2001::/32, ORCHID, benchmarking, ...
        && !(first == 0x2001 && second < 0x0200)
        // Documentation (RFC 3849, RFC 9637).
        && !(first == 0x2001 && second == 0x0db8)
        && (first & 0xfff0) != 0x3ff0
}

/// Checks where a URL leads and returns the address to connect to.
async fn vet(settings: &HttpSettings, url: &reqwest::Url) -> Result<SocketAddr, ToolError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ToolError::Refused(format!(
            "only http and https URLs can be called, not {}",
            url.scheme()
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ToolError::Refused("the URL has no host".into()))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|error| ToolError::Refused(format!("cannot resolve {host}: {error}")))?
        .collect();
    let Some(first) = addresses.first().copied() else {
        return Err(ToolError::Refused(format!("{host} resolves to no address")));
    };
    if !settings.allow.allows(bare, port) {
        if let Some(blocked) = addresses.iter().find(|address| !is_public(address.ip())) {
            return Err(ToolError::Refused(format!(
                "{host} resolves to {}, a non-public address: refused (add it to TOOL_HOSTS_ALLOW to allow it)",
                blocked.ip()
            )));
        }
    }
    Ok(first)
}

/// Sends `request`; answers the response as the model should see it.
pub async fn call(
    settings: &HttpSettings,
    request: &Outgoing,
    idempotency_key: Option<&str>,
) -> Result<Value, ToolError> {
    let url = reqwest::Url::parse(&request.url)
        .map_err(|error| ToolError::Refused(format!("invalid URL {}: {error}", request.url)))?;
    let method = reqwest::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| ToolError::Refused(format!("invalid method {}", request.method)))?;
    let address = vet(settings, &url).await?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let client = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment (HTTPS_PROXY, ALL_PROXY, ...) would be connected to
        // instead of the address checked above.
        .no_proxy()
        .resolve(&host, address)
        .build()
        .map_err(|error| ToolError::Unavailable(format!("cannot build an HTTP client: {error}")))?;
    let retry = idempotent(method.as_str());
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(if retry { 2 } else { 0 })
        .with_jitter()
        .build();
    loop {
        let mut builder = client.request(method.clone(), url.clone());
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(key) = idempotency_key.filter(|_| method != reqwest::Method::GET) {
            builder = builder.header("Idempotency-Key", key);
        }
        if let Some(body) = &request.json_body {
            builder = builder.json(body);
        }
        let reason = match builder.send().await {
            Ok(response) => {
                let status = response.status();
                let (body, truncated) = read_bounded(response, settings.max_response_bytes).await;
                if status.is_server_error() || status.as_u16() == 429 {
                    format!("HTTP {status}: {}", text_of(&body))
                } else {
                    let body = serde_json::from_slice::<Value>(&body)
                        .unwrap_or_else(|_| Value::String(text_of(&body)));
                    let result =
                        json!({"status": status.as_u16(), "body": body, "truncated": truncated});
                    return if status.is_success() {
                        Ok(result)
                    } else {
                        Err(ToolError::Refused(format!(
                            "HTTP {status}: {}",
                            result["body"]
                        )))
                    };
                }
            }
            Err(error) => format!("the request failed: {error}"),
        };
        match delays.next() {
            Some(delay) => {
                tracing::warn!(%reason, url = %request.url, "An imported tool's request failed; retrying.");
                tokio::time::sleep(delay).await;
            }
            // Not retried (a write whose outcome is unknown must not be sent twice by us), or
            // out of retries: the model is told.
            None => return Err(ToolError::Refused(reason)),
        }
    }
}

/// The body, cut at `limit` bytes.
async fn read_bounded(response: reqwest::Response, limit: usize) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        let room = limit.saturating_sub(body.len());
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return (body, true);
        }
        body.extend_from_slice(&chunk);
    }
    (body, false)
}

fn text_of(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn ipv6_forms_of_private_addresses_and_special_ranges_are_not_public() {
        for refused in [
            // IPv4-compatible (::/96, deprecated): refused outright, even around a public address.
            "::127.0.0.1",
            "::10.0.0.1",
            "::8.8.8.8",
            // IPv4-mapped, judged by the address inside.
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            // NAT64 well-known prefix, judged by the address inside.
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::192.168.0.1",
            // Local-use NAT64 (64:ff9b:1::/48): refused outright.
            "64:ff9b:1::8.8.8.8",
            "64:ff9b:1:ffff::1",
            // 6to4 (2002::/16): refused outright.
            "2002:7f00:1::1",
            "2002:808:808::1",
            // Teredo (2001::/32) and the rest of 2001::/23.
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:10::1",
            "2001:1ff::1",
            // Site-local (fec0::/10, deprecated).
            "fec0::1",
            "feff::1",
            // Documentation, discard-only, and anything outside 2000::/3.
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "4000::1",
            "::",
            "::2",
            "ff02::1",
            // The 6to4 relay anycast block.
            "192.88.99.1",
        ] {
            assert!(!is_public(refused.parse().unwrap()), "{refused}");
        }
        for public in [
            "2001:200::1",
            "2001:4860:4860::8888",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "64:ff9b::5db8:d822",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn the_allow_list_matches_hosts_and_ports() {
        let allow = HostAllowList::parse("127.0.0.1:8099, Api.Example.com");
        assert!(allow.allows("127.0.0.1", 8099));
        assert!(!allow.allows("127.0.0.1", 8100));
        assert!(allow.allows("api.example.com", 443));
        assert!(!allow.allows("localhost", 8099));
    }

    #[tokio::test]
    async fn a_private_address_is_refused_before_anything_is_sent() {
        let settings = HttpSettings {
            timeout: Duration::from_secs(2),
            max_response_bytes: 1024,
            allow: HostAllowList::default(),
        };
        for url in [
            "http://127.0.0.1:9/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:9/",
            "http://localhost:9/",
        ] {
            let request = Outgoing {
                method: "GET".into(),
                url: url.into(),
                headers: Vec::new(),
                json_body: None,
            };
            let error = call(&settings, &request, None).await.unwrap_err();
            assert!(
                error.to_string().contains("non-public address"),
                "{url}: {error}"
            );
        }
        let file = Outgoing {
            method: "GET".into(),
            url: "file:///etc/passwd".into(),
            headers: Vec::new(),
            json_body: None,
        };
        assert!(call(&settings, &file, None).await.is_err());
    }
}
