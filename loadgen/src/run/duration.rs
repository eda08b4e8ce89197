//! Parsing of human durations (`10s`, `500ms`, `1m`, `1.5h`) and rates for the CLI.

use std::time::Duration;

/// Longest duration accepted anywhere on the command line (one week).
pub const DURATION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// Highest rate accepted for `--rate` / `-R` (messages or requests per second).
pub const RATE_MAX: f64 = 100_000_000.0;

/// Why a duration or rate could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    /// The text was empty.
    #[error("empty duration")]
    Empty,
    /// The number part was missing or malformed.
    #[error("'{0}' is not a duration (examples: 10s, 500ms, 1m, 1.5h)")]
    Malformed(String),
    /// The unit is not one of us, ms, s, m, h.
    #[error("unknown unit '{0}' (use us, ms, s, m or h)")]
    Unit(String),
    /// The duration exceeds [`DURATION_MAX`].
    #[error("duration longer than one week")]
    TooLong,
    /// The rate was not a positive finite number within [`RATE_MAX`].
    #[error("'{0}' is not a rate (a positive number per second, at most 1e8)")]
    Rate(String),
}

/// Parses `10s`, `500ms`, `250us`, `1m`, `2h`, `1.5s`; a bare number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| DurationError::Malformed(text.to_string()))?;
    if !value.is_finite() || value < 0.0 {
        return Err(DurationError::Malformed(text.to_string()));
    }
    let seconds_per_unit = match unit {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(DurationError::Unit(other.to_string())),
    };
    let seconds = value * seconds_per_unit;
    if seconds > DURATION_MAX.as_secs_f64() {
        return Err(DurationError::TooLong);
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a rate per second: a positive finite number no larger than [`RATE_MAX`].
pub fn parse_rate(text: &str) -> Result<f64, DurationError> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| DurationError::Rate(text.to_string()))?;
    if !value.is_finite() || value <= 0.0 || value > RATE_MAX {
        return Err(DurationError::Rate(text.to_string()));
    }
    Ok(value)
}

/// Formats a duration for humans: `850us`, `12.3ms`, `4.20s`.
pub fn format_duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0}us")
    } else if micros < 1e6 {
        format!("{:.2}ms", micros / 1e3)
    } else {
        format!("{:.2}s", micros / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let table = [
            ("10s", Duration::from_secs(10)),
            ("500ms", Duration::from_millis(500)),
            ("1m", Duration::from_secs(60)),
            ("2h", Duration::from_secs(7200)),
            ("250us", Duration::from_micros(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("3", Duration::from_secs(3)),
        ];
        for (text, want) in table {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            parse_duration("x"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(parse_duration("10q"), Err(DurationError::Unit(_))));
        assert!(matches!(parse_duration(""), Err(DurationError::Empty)));
        assert!(matches!(
            parse_duration("1.2.3s"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("9999h"),
            Err(DurationError::TooLong)
        ));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1000"), Ok(1000.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-3").is_err());
        assert!(parse_rate("abc").is_err());
        assert!(parse_rate("inf").is_err());
    }
}
