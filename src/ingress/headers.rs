//! Values a caller controls through request headers, parsed strictly and bounded.
//!
//! Every value that flows from a header into a timer or a size is parsed with a bounded digit count and
//! saturating arithmetic, then clamped to a configured maximum: a header must never be able to overflow
//! a `Duration` or an `Instant` on an executor (a panic there used to leave a core dead).

use std::time::Duration;

use http::HeaderMap;

/// Digits the gRPC spec allows in a `grpc-timeout` value (`TimeoutValue → 1*8 ASCII digit`).
const GRPC_TIMEOUT_DIGITS_MAX: usize = 8;
/// Digits accepted in `connect-timeout-ms` (the Connect spec allows at most 10).
const CONNECT_TIMEOUT_DIGITS_MAX: usize = 10;

/// A header value the caller got wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `grpc-timeout` is not 1–8 digits followed by one of `H M S m u n`.
    #[error("invalid grpc-timeout {0:?}: expected 1 to 8 digits and a unit (H, M, S, m, u or n)")]
    GrpcTimeout(String),
    /// `connect-timeout-ms` is not 1–10 digits.
    #[error("invalid connect-timeout-ms {0:?}: expected 1 to 10 digits")]
    ConnectTimeout(String),
}

impl Error {
    /// Always terminal: the same header fails the same way.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// How long the caller waits for the response: `grpc-timeout` (`100m`, `5S`, ...) or
/// `connect-timeout-ms`, clamped to `max`. `None` when the caller set neither.
pub fn request_timeout(headers: &HeaderMap, max: Duration) -> Result<Option<Duration>, Error> {
    if let Some(value) = headers.get("grpc-timeout") {
        let text = String::from_utf8_lossy(value.as_bytes());
        return grpc_timeout(&text)
            .map(|d| Some(d.min(max)))
            .ok_or_else(|| Error::GrpcTimeout(shorten(&text)));
    }
    if let Some(value) = headers.get("connect-timeout-ms") {
        let text = String::from_utf8_lossy(value.as_bytes());
        return digits(&text, CONNECT_TIMEOUT_DIGITS_MAX)
            .map(|ms| Some(Duration::from_millis(ms).min(max)))
            .ok_or_else(|| Error::ConnectTimeout(shorten(&text)));
    }
    Ok(None)
}

/// Parses a gRPC `TimeoutValue TimeoutUnit`; `None` if malformed. Cannot overflow: 8 digits of hours
/// is about 11,400 years, well inside `Duration`.
fn grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let n = digits(
        &value[..value.len() - unit.len_utf8()],
        GRPC_TIMEOUT_DIGITS_MAX,
    )?;
    Some(match unit {
        'H' => Duration::from_secs(n.saturating_mul(3600)),
        'M' => Duration::from_secs(n.saturating_mul(60)),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// 1 to `max_digits` ASCII digits (no sign, no spaces) as a number.
fn digits(text: &str, max_digits: usize) -> Option<u64> {
    let valid =
        !text.is_empty() && text.len() <= max_digits && text.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| text.parse().ok()).flatten()
}

/// A header value short enough to echo in an error message.
fn shorten(text: &str) -> String {
    const ECHO_CHARS_MAX: usize = 32;
    if text.chars().count() <= ECHO_CHARS_MAX {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(ECHO_CHARS_MAX).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const MAX: Duration = Duration::from_secs(24 * 3600);

    fn timeout(name: &'static str, value: &str) -> Result<Option<Duration>, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        request_timeout(&headers, MAX)
    }

    #[test]
    fn both_headers_parse() {
        assert_eq!(
            timeout("grpc-timeout", "250m"),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(
            timeout("grpc-timeout", "3S"),
            Ok(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            timeout("grpc-timeout", "7n"),
            Ok(Some(Duration::from_nanos(7)))
        );
        assert_eq!(
            timeout("connect-timeout-ms", "1500"),
            Ok(Some(Duration::from_millis(1500)))
        );
        assert_eq!(request_timeout(&HeaderMap::new(), MAX), Ok(None));
    }

    #[test]
    fn extreme_values_are_refused_or_clamped_never_overflow() {
        // The values that used to panic an executor ("overflow when adding duration to instant").
        for value in [
            "9223372036854775807S",
            "18446744073709551615S",
            "5124095576030432H",
        ] {
            assert!(
                matches!(timeout("grpc-timeout", value), Err(Error::GrpcTimeout(_))),
                "{value}"
            );
        }
        assert_eq!(timeout("grpc-timeout", "99999999H"), Ok(Some(MAX)));
        assert_eq!(timeout("connect-timeout-ms", "9999999999"), Ok(Some(MAX)));
        assert!(timeout("connect-timeout-ms", "99999999999").is_err());
    }

    #[test]
    fn malformed_values_are_refused() {
        for value in [
            "", "S", "10", "10s", "-1S", "+1S", " 1S", "1.5S", "1é", "１S",
        ] {
            assert!(timeout("grpc-timeout", value).is_err(), "{value:?}");
        }
        for value in ["", "-5", "1e3", "12ms", " 1"] {
            assert!(timeout("connect-timeout-ms", value).is_err(), "{value:?}");
        }
    }

    #[test]
    fn errors_echo_at_most_a_short_prefix() {
        let long = "9".repeat(10_000) + "S";
        let Err(e) = timeout("grpc-timeout", &long) else {
            panic!("accepted")
        };
        assert!(e.to_string().len() < 200, "{e}");
    }
}
