//! Servers the bench did not start (`--target external`): their settings, and how a gateway URL
//! is turned into the address the socket client dials.

use std::net::SocketAddr;

use anyhow::{Context, bail};

use crate::{client::GatewayEndpoint, plan::Tokens};

/// Servers the bench did not start.
#[derive(Clone, Debug, Default)]
pub struct External {
    /// Base URLs of the REST API (`http[s]://host[:port][/prefix]`): API processes, or the load
    /// balancer in front of them. Requests go round-robin over them.
    pub api_urls: Vec<String>,
    /// Socket.IO endpoints (`http://` or `ws://host[:port][/prefix]`): gateways, or the load
    /// balancer in front of them. Sockets are spread round-robin over them.
    pub gateway_urls: Vec<String>,
    /// Where the users' tokens come from (`None` until one is given).
    pub tokens: Option<Tokens>,
    /// Each scenario run uses the org `<prefix>-<random>`, so that its groups and messages stay
    /// apart from every other tenant's and from earlier runs'.
    pub org_prefix: String,
}

impl External {
    /// Why these settings cannot drive a run, if they cannot.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.api_urls.is_empty() || self.gateway_urls.is_empty() {
            bail!("--target external needs at least one --api-url and one --gateway-url");
        }
        if self.tokens.is_none() {
            bail!(
                "--target external needs the servers' HS256 secret (--jwt-secret or BENCH_JWT_SECRET) \
                 or a --token-command that prints a token for {{org}} and {{email}}"
            );
        }
        let prefix_ok = !self.org_prefix.is_empty()
            && self.org_prefix.len() <= 40
            && self
                .org_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !prefix_ok {
            bail!("--org-prefix must be 1 to 40 letters, digits, '-', '_' or '.'");
        }
        for url in &self.gateway_urls {
            let parsed = reqwest::Url::parse(url).with_context(|| format!("--gateway-url {url}"))?;
            check_gateway_scheme(url, parsed.scheme())?;
        }
        for url in &self.api_urls {
            let parsed = reqwest::Url::parse(url).with_context(|| format!("--api-url {url}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                bail!("--api-url {url}: expected http://host[:port] or https://host[:port]");
            }
        }
        Ok(())
    }
}

/// The socket client speaks plain WebSocket only.
fn check_gateway_scheme(url: &str, scheme: &str) -> anyhow::Result<()> {
    match scheme {
        "http" | "ws" => Ok(()),
        "https" | "wss" => bail!(
            "--gateway-url {url}: the bench's socket client speaks plain WebSocket only; give a plain \
             http:// address of the gateways (a port-forward, or their service inside the cluster)"
        ),
        other => bail!("--gateway-url {url}: unknown scheme {other} (expected http:// or ws://)"),
    }
}

/// Resolves a `--gateway-url` to the address to dial and the host and path to name.
pub async fn gateway_endpoint(url: &str) -> anyhow::Result<GatewayEndpoint> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--gateway-url {url}"))?;
    check_gateway_scheme(url, parsed.scheme())?;
    let port = parsed.port().unwrap_or(80);
    let Some(host_text) = parsed.host_str().filter(|h| !h.is_empty()) else {
        bail!("--gateway-url {url}: no host");
    };
    let bare = host_text.trim_start_matches('[').trim_end_matches(']');
    let addr = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::from((ip, port)),
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .with_context(|| format!("--gateway-url {url}: resolving {bare}"))?
            .next()
            .with_context(|| format!("--gateway-url {url}: {bare} has no address"))?,
    };
    let host = match parsed.port() {
        Some(port) => format!("{host_text}:{port}"),
        None => host_text.to_owned(),
    };
    let prefix = parsed.path().trim_end_matches('/');
    Ok(GatewayEndpoint {
        addr,
        host,
        path: format!("{prefix}/socket.io/"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gateway_urls_name_host_and_path() {
        let plain = gateway_endpoint("http://127.0.0.1:8080").await.unwrap();
        assert_eq!(plain.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(
            (plain.host.as_str(), plain.path.as_str()),
            ("127.0.0.1:8080", "/socket.io/")
        );
        let prefixed = gateway_endpoint("ws://[::1]/chat/").await.unwrap();
        assert_eq!(prefixed.addr, "[::1]:80".parse().unwrap());
        assert_eq!(
            (prefixed.host.as_str(), prefixed.path.as_str()),
            ("[::1]", "/chat/socket.io/")
        );
        let named = gateway_endpoint("http://localhost:9000").await.unwrap();
        assert!(named.addr.ip().is_loopback() && named.host == "localhost:9000");
        let tls = gateway_endpoint("https://chat.example.com").await.unwrap_err();
        assert!(tls.to_string().contains("plain WebSocket"), "{tls}");
    }

    #[test]
    fn external_settings_are_checked() {
        let mut external = External {
            api_urls: vec!["http://127.0.0.1:8080".into()],
            gateway_urls: vec!["http://127.0.0.1:8080".into()],
            tokens: Some(Tokens::Secret("s".repeat(32))),
            org_prefix: "bench".into(),
        };
        external.check().unwrap();
        external.org_prefix = "no spaces".into();
        assert!(external.check().is_err());
        external.org_prefix = "bench".into();
        external.tokens = None;
        assert!(external.check().unwrap_err().to_string().contains("--token-command"));
        external.tokens = Some(Tokens::Command("true".into()));
        external.api_urls = vec!["ftp://x".into()];
        assert!(external.check().is_err());
    }
}
