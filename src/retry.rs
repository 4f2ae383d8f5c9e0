//! One retry policy type for everything that retries (discovery now, invocations next): none, fixed
//! delay, or exponential backoff with a cap, always with a bound on attempts.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which backoff a [`RetryPolicy`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// Never retry.
    None,
    /// Wait `initial_interval` between attempts.
    Fixed,
    /// Wait `initial_interval`, then ×`factor` each time, capped at `max_interval`.
    Exponential,
}

impl Serialize for RetryKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            RetryKind::None => "None",
            RetryKind::Fixed => "Fixed",
            RetryKind::Exponential => "Exponential",
        })
    }
}

impl<'de> Deserialize<'de> for RetryKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(RetryKind::None),
            "fixed" | "fixeddelay" | "fixed_delay" => Ok(RetryKind::Fixed),
            "exponential" => Ok(RetryKind::Exponential),
            _ => Err(serde::de::Error::custom(format!(
                "unknown retry policy type `{s}`, expected None, Fixed or Exponential"
            ))),
        }
    }
}

/// A retry policy (config: `type`, `initial_interval`, `factor`, `max_interval`, `max_attempts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// None, Fixed or Exponential (case-insensitive).
    #[serde(rename = "type")]
    pub kind: RetryKind,
    /// First delay (Fixed: every delay).
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    /// Exponential: each delay is the previous one times this.
    pub factor: f64,
    /// Exponential: no delay is longer than this.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Attempts in total, the first included; 0 = unlimited.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            kind: RetryKind::Exponential,
            initial_interval: Duration::from_millis(50),
            factor: 2.0,
            max_interval: Duration::from_secs(10),
            max_attempts: 0,
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with these parameters.
    pub fn exponential(initial: Duration, factor: f64, max: Duration, max_attempts: u32) -> Self {
        Self {
            kind: RetryKind::Exponential,
            initial_interval: initial,
            factor,
            max_interval: max,
            max_attempts,
        }
    }

    /// The delay before each retry, in order; ends when no attempt is left.
    pub fn delays(&self) -> Delays {
        Delays {
            policy: self.clone(),
            next: self.initial_interval,
            retries: 0,
        }
    }
}

/// Iterator of retry delays.
pub struct Delays {
    policy: RetryPolicy,
    next: Duration,
    retries: u32,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let p = &self.policy;
        if p.kind == RetryKind::None || (p.max_attempts != 0 && self.retries + 1 >= p.max_attempts)
        {
            return None;
        }
        self.retries += 1;
        let delay = self.next;
        if p.kind == RetryKind::Exponential {
            self.next = self.next.mul_f64(p.factor.max(1.0)).min(p.max_interval);
        }
        Some(delay.min(p.max_interval.max(p.initial_interval)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_up_to_the_cap_and_stops_at_max_attempts() {
        let p = RetryPolicy::exponential(
            Duration::from_millis(100),
            2.0,
            Duration::from_millis(500),
            6,
        );
        let delays: Vec<u64> = p.delays().map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }

    #[test]
    fn none_never_retries_and_fixed_repeats() {
        let none = RetryPolicy {
            kind: RetryKind::None,
            ..RetryPolicy::default()
        };
        assert_eq!(none.delays().count(), 0);
        let fixed = RetryPolicy {
            kind: RetryKind::Fixed,
            initial_interval: Duration::from_millis(7),
            max_attempts: 4,
            ..RetryPolicy::default()
        };
        assert_eq!(
            fixed.delays().collect::<Vec<_>>(),
            vec![Duration::from_millis(7); 3]
        );
        // Unlimited keeps going.
        assert_eq!(RetryPolicy::default().delays().take(1000).count(), 1000);
    }
}
