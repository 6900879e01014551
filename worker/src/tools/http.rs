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
/// (CGNAT), unspecified, broadcast, multicast, documentation or unique-local.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
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
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8)
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
