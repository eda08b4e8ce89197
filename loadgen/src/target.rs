//! `http://` and `https://host:port/path` targets: parsing and address resolution.

use std::net::{SocketAddr, ToSocketAddrs};

/// Why a URL could not be used as a target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Only `http://` and `https://` are supported.
    #[error("'{0}' is not an http:// or https:// URL")]
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
    /// `https://`: the connection is TLS.
    pub tls: bool,
    /// Host name or address without port and brackets (TLS server name).
    pub host: String,
    /// Value for the `Host` header (`host` or `host:port`).
    pub host_header: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Resolved address (IPv4 preferred).
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `url` (`http[s]://host[:port][/path]`) and resolves the host.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let (tls, rest) = split_scheme(url)?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(TargetError::Authority(url.to_string()));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| TargetError::Authority(url.to_string()))?;
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
            tls,
            host: host.to_string(),
            host_header: authority.to_string(),
            path: path.to_string(),
            addr,
        })
    }
}

/// `(tls, rest after "scheme://")`.
fn split_scheme(url: &str) -> Result<(bool, &str), TargetError> {
    if let Some(rest) = url.strip_prefix("http://") {
        Ok((false, rest))
    } else if let Some(rest) = url.strip_prefix("https://") {
        Ok((true, rest))
    } else {
        Err(TargetError::Scheme(url.to_string()))
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let close = bracketed.find(']')?;
        let host = &bracketed[..close];
        let port = match &bracketed[close + 1..] {
            "" => default_port,
            tail => tail.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host, port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority, default_port)),
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
        assert!(!target.tls);
        let bare = Target::parse("http://127.0.0.1").unwrap();
        assert_eq!(bare.path, "/");
        assert_eq!(bare.addr.port(), 80);
        let secure = Target::parse("https://localhost/x").unwrap();
        assert!(secure.tls);
        assert_eq!(secure.host, "localhost");
        assert_eq!(secure.addr.port(), 443);
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(matches!(
            Target::parse("ftp://x/"),
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
    /// `https://`.
    pub tls: bool,
    /// Host without port (TLS server name).
    pub host: String,
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
    /// Parses `http[s]://host:port/path-with-{room}-{seq}` and resolves the host.
    pub fn parse(text: &str) -> Result<UrlTemplate, UrlTemplateError> {
        let (tls, rest) = split_scheme(text)?;
        let slash = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(slash);
        if authority.contains('{') {
            return Err(UrlTemplateError::PlaceholderInAuthority(text.to_string()));
        }
        let scheme = if tls { "https" } else { "http" };
        let target = Target::parse(&format!("{scheme}://{authority}/"))?;
        let path = if path.is_empty() { "/" } else { path };
        Ok(UrlTemplate {
            text: text.to_string(),
            tls,
            host: target.host,
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
