//! Logging through `log` + env_logger, in a pretty, compact or JSON line format.
//!
//! In JSON mode every line on stderr is one JSON object (`timestamp` RFC 3339 UTC, `level`, `target`,
//! `message`, then the record's key-value fields), and panics are logged the same way, so a log shipper can
//! parse every line.

use std::io::Write;

use crate::config::{LogFormat, Tracing};

/// Installs the global logger. `RUST_LOG`, when set, wins over `tracing.filter`.
pub fn init(tracing: &Tracing) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| tracing.filter.clone());
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&filter);
    builder.target(env_logger::Target::Stderr);
    match tracing.log_format {
        LogFormat::Pretty => {
            builder.format_timestamp_millis();
        }
        LogFormat::Compact => {
            builder.write_style(env_logger::WriteStyle::Never);
            builder.format(|buf, record| {
                writeln!(
                    buf,
                    "{} {} {}{}",
                    buf.timestamp_millis(),
                    record.level(),
                    record.args(),
                    KvText(record.key_values())
                )
            });
        }
        LogFormat::Json => {
            builder.write_style(env_logger::WriteStyle::Never);
            builder.format(|buf, record| {
                let mut line = serde_json::Map::new();
                line.insert(
                    "timestamp".into(),
                    buf.timestamp_micros().to_string().into(),
                );
                line.insert("level".into(), record.level().as_str().into());
                line.insert("target".into(), record.target().into());
                line.insert("message".into(), record.args().to_string().into());
                let mut fields = JsonFields(&mut line);
                let _ = record.key_values().visit(&mut fields);
                serde_json::to_writer(&mut *buf, &line)?;
                buf.write_all(b"\n")
            });
        }
    }
    // A second init (tests that start the runtime twice in-process) keeps the first logger.
    let _ = builder.try_init();
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned());
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        log::error!(target: "panic", location, thread; "{payload}");
    }));
}

/// Writes key-value fields as ` key=value` after a compact line.
struct KvText<'a>(&'a dyn log::kv::Source);

impl std::fmt::Display for KvText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Visitor<'a, 'b>(&'a mut std::fmt::Formatter<'b>);
        impl<'kvs> log::kv::VisitSource<'kvs> for Visitor<'_, '_> {
            fn visit_pair(
                &mut self,
                key: log::kv::Key<'kvs>,
                value: log::kv::Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                write!(self.0, " {key}={value}").map_err(|_| log::kv::Error::msg("fmt"))
            }
        }
        self.0.visit(&mut Visitor(f)).map_err(|_| std::fmt::Error)
    }
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        // A field never overwrites the fixed ones.
        let key = key.as_str();
        let key = if matches!(key, "timestamp" | "level" | "target" | "message") {
            format!("field_{key}")
        } else {
            key.to_owned()
        };
        self.0.insert(key, json);
        Ok(())
    }
}

/// Lets one log line through per interval and counts the ones it held back (for lines an overload or a
/// hostile caller could repeat without bound). One per core: not thread-safe.
#[derive(Debug)]
pub struct RateLimit {
    every: std::time::Duration,
    last: std::cell::Cell<Option<std::time::Instant>>,
    suppressed: std::cell::Cell<u64>,
}

impl RateLimit {
    /// At most one line per `every`.
    pub fn new(every: std::time::Duration) -> RateLimit {
        RateLimit {
            every,
            last: std::cell::Cell::new(None),
            suppressed: std::cell::Cell::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.last.get().is_some_and(|last| now - last < self.every) {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.last.set(Some(now));
        Some(self.suppressed.replace(0))
    }
}

#[cfg(test)]
mod rate_limit_tests {
    use super::RateLimit;
    use std::time::Duration;

    #[test]
    fn one_line_per_interval_and_a_count_of_the_rest() {
        let limit = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        let limit = RateLimit::new(Duration::ZERO);
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), Some(0));
    }
}
