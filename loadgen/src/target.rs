//! Plain `http://host:port/path` targets: parsing and address resolution.

use std::net::{SocketAddr, ToSocketAddrs};

/// Why a URL could not be used as a target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Only `http://` is supported (no TLS).
    #[error("'{0}' is not an http:// URL (only plain HTTP/1.1 is supported)")]
    Scheme(String),
    /// Host or port missing or malformed.
    #[error("'{0}' has no valid host[:port]")]
    Authority(String),
    /// The host name did not resolve.
    #[error("cannot resolve '{host}': {reason}")]
    Resolve {
        /// Host name that failed.
        host: String,
        /// Resolver message.
        reason: String,
    },
}

/// A parsed and resolved HTTP target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Value for the `Host` header (`host` or `host:port`).
    pub host_header: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Resolved address (IPv4 preferred).
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `url` (`http://host[:port][/path]`) and resolves the host.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| TargetError::Scheme(url.to_string()))?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(TargetError::Authority(url.to_string()));
        }
        let (host, port) =
            split_host_port(authority).ok_or_else(|| TargetError::Authority(url.to_string()))?;
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|error| TargetError::Resolve {
                host: host.to_string(),
                reason: error.to_string(),
            })?
            .collect();
        let addr = addrs
            .iter()
            .find(|addr| addr.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| TargetError::Resolve {
                host: host.to_string(),
                reason: "no addresses".to_string(),
            })?;
        Ok(Target {
            host_header: authority.to_string(),
            path: path.to_string(),
            addr,
        })
    }
}

fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let close = bracketed.find(']')?;
        let host = &bracketed[..close];
        let port = match &bracketed[close + 1..] {
            "" => 80,
            tail => tail.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host, port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority, 80)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let target = Target::parse("http://127.0.0.1:8080/rooms/r0/events?x=1").unwrap();
        assert_eq!(target.host_header, "127.0.0.1:8080");
        assert_eq!(target.path, "/rooms/r0/events?x=1");
        assert_eq!(target.addr, "127.0.0.1:8080".parse().unwrap());
        let bare = Target::parse("http://127.0.0.1").unwrap();
        assert_eq!(bare.path, "/");
        assert_eq!(bare.addr.port(), 80);
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(matches!(
            Target::parse("https://x/"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::parse("http:///x"),
            Err(TargetError::Authority(_))
        ));
        assert!(matches!(
            Target::parse("http://h:port/"),
            Err(TargetError::Authority(_))
        ));
    }
}

/// A URL whose path may contain placeholders; scheme and authority may not, so the host is
/// resolved once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    /// The text given on the command line.
    pub text: String,
    /// Value for the `Host` header.
    pub host_header: String,
    /// Resolved server address.
    pub addr: SocketAddr,
    /// Path and query template.
    pub path: crate::template::Template,
}

/// Why a URL template could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlTemplateError {
    /// The fixed part was not a usable URL.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The path template was malformed.
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    /// Placeholders are only allowed in the path.
    #[error("placeholders are only allowed in the path of '{0}'")]
    PlaceholderInAuthority(String),
}

impl UrlTemplate {
    /// Parses `http://host:port/path-with-{room}-{seq}` and resolves the host.
    pub fn parse(text: &str) -> Result<UrlTemplate, UrlTemplateError> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| TargetError::Scheme(text.to_string()))?;
        let slash = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(slash);
        if authority.contains('{') {
            return Err(UrlTemplateError::PlaceholderInAuthority(text.to_string()));
        }
        let target = Target::parse(&format!("http://{authority}/"))?;
        let path = if path.is_empty() { "/" } else { path };
        Ok(UrlTemplate {
            text: text.to_string(),
            host_header: target.host_header,
            addr: target.addr,
            path: crate::template::Template::parse(path)?,
        })
    }
}

#[cfg(test)]
mod template_tests {
    use super::*;

    #[test]
    fn url_templates() {
        let url = UrlTemplate::parse("http://127.0.0.1:9/rooms/{room}/events").unwrap();
        assert_eq!(url.path.render("r3", 1), "/rooms/r3/events");
        assert_eq!(url.host_header, "127.0.0.1:9");
        assert!(matches!(
            UrlTemplate::parse("http://{room}:9/x"),
            Err(UrlTemplateError::PlaceholderInAuthority(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("http://127.0.0.1:9/{bad}"),
            Err(UrlTemplateError::Template(_))
        ));
    }
}
