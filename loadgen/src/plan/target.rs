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
    /// Not URL syntax (a space in the path, an unclosed `[`…).
    #[error("'{url}' is not a valid URL: {reason}")]
    Malformed {
        /// The URL as given.
        url: String,
        /// What `http::Uri` found wrong.
        reason: String,
    },
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
    /// Parses `url` (`http[s]://host[:port][/path]`, with [`http::Uri`]) and resolves the
    /// host.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let scheme_error = || TargetError::Scheme(url.to_string());
        let authority_error = || TargetError::Authority(url.to_string());
        let uri: http::Uri = url.parse().map_err(|error| match url.split_once("://") {
            Some(("http" | "https", _)) => TargetError::Malformed {
                url: url.to_string(),
                reason: format!("{error}"),
            },
            _ => scheme_error(),
        })?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(scheme_error()),
        };
        let authority = uri.authority().ok_or_else(authority_error)?;
        if authority.as_str().contains('@') {
            return Err(authority_error());
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|v6| v6.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(authority_error());
        }
        // `Uri` keeps an unparsable port (`host:port`) in the authority without a number.
        let port = match authority.as_str().rsplit_once(':') {
            Some((_, port)) if !port.ends_with(']') => {
                authority.port_u16().ok_or_else(authority_error)?
            }
            _ if tls => 443,
            _ => 80,
        };
        let mut path = match uri.path() {
            "" => "/".to_string(),
            path => path.to_string(),
        };
        if let Some(query) = uri.query() {
            path.push('?');
            path.push_str(query);
        }
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
            host_header: authority.as_str().to_string(),
            path,
            addr,
        })
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
            Err(TargetError::Authority(_) | TargetError::Malformed { .. })
        ));
        assert!(matches!(
            Target::parse("http://h:port/"),
            Err(TargetError::Authority(_))
        ));
        for url in [
            "http://user@127.0.0.1/",
            "http://127.0.0.1:65536/",
            "http://:80/",
        ] {
            assert!(
                matches!(Target::parse(url), Err(TargetError::Authority(_))),
                "{url}"
            );
        }
        for url in ["http://[::1/", "http://127.0.0.1/a b"] {
            assert!(
                matches!(Target::parse(url), Err(TargetError::Malformed { .. })),
                "{url}"
            );
        }
        for url in ["127.0.0.1:80", "/rooms/a", "", "ws://127.0.0.1/"] {
            assert!(
                matches!(Target::parse(url), Err(TargetError::Scheme(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn parses_ipv6_and_query_only_urls() {
        let v6 = Target::parse("http://[::1]:8080/x").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.host_header, "[::1]:8080");
        assert_eq!(v6.addr, "[::1]:8080".parse().unwrap());
        let query = Target::parse("http://127.0.0.1:9?x=1").unwrap();
        assert_eq!(query.path, "/?x=1");
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
    pub path: crate::proto::template::Template,
}

/// Why a URL template could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlTemplateError {
    /// The fixed part was not a usable URL.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The path template was malformed.
    #[error(transparent)]
    Template(#[from] crate::proto::template::TemplateError),
    /// Placeholders are only allowed in the path.
    #[error("placeholders are only allowed in the path of '{0}'")]
    PlaceholderInAuthority(String),
}

impl UrlTemplate {
    /// Parses `http[s]://host:port/path-with-{room}-{seq}` and resolves the host.
    pub fn parse(text: &str) -> Result<UrlTemplate, UrlTemplateError> {
        // The path may hold placeholders, which are not URI syntax: only the part before
        // it (`scheme://authority`) is parsed as a URL.
        let authority_start = text.find("://").map_or(0, |at| at + 3);
        let path_start = text[authority_start..]
            .find(['/', '?'])
            .map_or(text.len(), |at| authority_start + at);
        let (origin, path) = text.split_at(path_start);
        if origin.contains('{') {
            return Err(UrlTemplateError::PlaceholderInAuthority(text.to_string()));
        }
        let target = Target::parse(origin)?;
        let path = match path {
            "" => "/".to_string(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_string(),
        };
        Ok(UrlTemplate {
            text: text.to_string(),
            tls: target.tls,
            host: target.host,
            host_header: target.host_header,
            addr: target.addr,
            path: crate::proto::template::Template::parse(&path)?,
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
