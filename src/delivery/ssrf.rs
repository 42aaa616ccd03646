//! The SSRF guard at connect time: a DNS resolver that refuses names resolving
//! to private or reserved addresses, so a hostname cannot smuggle a request
//! into the network hookpost runs in (DNS rebinding included: the addresses
//! checked are the ones connected to). IP literals never reach a resolver and
//! are checked before sending.

use std::net::{IpAddr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::address::is_blocked;

/// Why a destination was refused; found in the error chain to categorise the
/// attempt as `blocked`.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {addr}, a private or reserved address; delivery refused")]
pub struct BlockedAddress {
    pub host: String,
    pub addr: IpAddr,
}

/// The system resolver, filtered by [`is_blocked`].
#[derive(Debug, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            // One blocked answer refuses the name: a mixed answer is a rebinding
            // attempt or a misconfiguration, and either way not safe to try.
            if let Some(bad) = addrs.iter().find(|a| is_blocked(a.ip())) {
                return Err(
                    Box::new(BlockedAddress { host, addr: bad.ip() }) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The blocked IP literal in `url`, if any.
pub fn blocked_literal(url: &str) -> Option<IpAddr> {
    let url = url::Url::parse(url).ok()?;
    let ip: IpAddr = match url.host()? {
        url::Host::Ipv4(ip) => ip.into(),
        url::Host::Ipv6(ip) => ip.into(),
        url::Host::Domain(_) => return None,
    };
    is_blocked(ip).then_some(ip)
}
