//! Content negotiation: which exposition format a `/metrics` scrape gets from its `Accept`
//! header, and the `Content-Type` that goes with it. HTTP knowledge stays here; the core's
//! `Format` only names the formats.

use ringcast_core::metrics::Format;

/// The format to answer a scrape with, from its `Accept` header: OpenMetrics when a media
/// range `application/openmetrics-text` (version absent or `1.0.0`) has a `q` above zero
/// and at least that of the best Prometheus text range (`text/plain` with version absent
/// or `0.0.4`, `text/*`, `*/*`); Prometheus text otherwise, and without a header.
pub fn metrics_format(accept_header: Option<&str>) -> Format {
    let Some(header) = accept_header else {
        return Format::Prometheus;
    };
    let mut openmetrics_q = 0.0f64;
    let mut text_q = 0.0f64;
    for range in header.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let mut q = 1.0f64;
        let mut version = None;
        for parameter in parts {
            let Some((key, value)) = parameter.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            if key.trim().eq_ignore_ascii_case("q") {
                q = value.parse().unwrap_or(0.0);
            } else if key.trim().eq_ignore_ascii_case("version") {
                version = Some(value);
            }
        }
        if media.eq_ignore_ascii_case("application/openmetrics-text") {
            if matches!(version, None | Some("1.0.0")) {
                openmetrics_q = openmetrics_q.max(q);
            }
        } else if media.eq_ignore_ascii_case("text/plain") {
            if matches!(version, None | Some("0.0.4")) {
                text_q = text_q.max(q);
            }
        } else if media.eq_ignore_ascii_case("text/*") || media == "*/*" {
            text_q = text_q.max(q);
        }
    }
    if openmetrics_q > 0.0 && openmetrics_q >= text_q {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    }
}

/// The `Content-Type` of a response in this format.
pub fn metrics_content_type(format: Format) -> &'static str {
    match format {
        Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_accept_table() {
        let cases: [(Option<&str>, Format); 10] = [
            (None, Format::Prometheus),
            (Some(""), Format::Prometheus),
            (Some("*/*"), Format::Prometheus),
            (Some("text/plain"), Format::Prometheus),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            // Prometheus 2.x scrape header.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                     version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Format::OpenMetrics,
            ),
            (
                Some("Application/OpenMetrics-Text; version=\"1.0.0\"; charset=utf-8"),
                Format::OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5"),
                Format::Prometheus,
            ),
            (
                Some("application/openmetrics-text;version=2.0.0"),
                Format::Prometheus,
            ),
            (Some("application/openmetrics-text;q=0"), Format::Prometheus),
        ];
        for (accept, expected) in cases {
            assert_eq!(metrics_format(accept), expected, "{accept:?}");
        }
        assert_eq!(
            metrics_content_type(Format::Prometheus),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            metrics_content_type(Format::OpenMetrics),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }
}
