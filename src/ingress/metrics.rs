//! Ingress figures for `/metrics`: requests by protocol and gRPC code, and a latency histogram per
//! protocol (time to the response head; for unary calls, the call). Node-wide relaxed atomics, written by
//! every core. Labels are bounded: 3 protocols × 17 codes.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Protocol;
use crate::grpc::Code;

/// Upper bounds of the latency buckets, in seconds (Prometheus's default buckets).
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const PROTOCOLS: [(Protocol, &str); 3] = [
    (Protocol::Grpc, "grpc"),
    (Protocol::ConnectJson, "connect_json"),
    (Protocol::ConnectProto, "connect_proto"),
];
const CODES: usize = 17;

/// The ingress's counters, shared by every core.
#[derive(Debug, Default)]
pub struct IngressMetrics {
    requests: [[AtomicU64; CODES]; 3],
    /// Per protocol: a count per bucket (not cumulative), then the overflow.
    latency_buckets: [[AtomicU64; BUCKETS.len() + 1]; 3],
    latency_sum_micros: [AtomicU64; 3],
}

fn index(protocol: Protocol) -> usize {
    PROTOCOLS
        .iter()
        .position(|(p, _)| *p == protocol)
        .expect("every protocol is listed")
}

impl IngressMetrics {
    /// Counts one answered request.
    pub fn record(&self, protocol: Protocol, code: Code, latency: Duration) {
        let p = index(protocol);
        self.requests[p][code as usize].fetch_add(1, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.latency_buckets[p][bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros[p].fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text of these figures (codes never seen are left out).
    pub fn render(&self, text: &mut String) {
        let name = "restate_ingress_requests_total";
        let _ = writeln!(
            text,
            "# HELP {name} Ingress requests answered, by protocol and gRPC code."
        );
        let _ = writeln!(text, "# TYPE {name} counter");
        for (p, (_, protocol)) in PROTOCOLS.iter().enumerate() {
            for code in 0..CODES {
                let value = self.requests[p][code].load(Ordering::Relaxed);
                if value > 0 {
                    let code = match code {
                        0 => "ok",
                        code => super::code_of(code as u32).connect_name(),
                    };
                    let _ = writeln!(
                        text,
                        "{name}{{protocol=\"{protocol}\",code=\"{code}\"}} {value}"
                    );
                }
            }
        }
        let name = "restate_ingress_request_duration_seconds";
        let _ = writeln!(
            text,
            "# HELP {name} Time from a request to its response head, by protocol."
        );
        let _ = writeln!(text, "# TYPE {name} histogram");
        for (p, (_, protocol)) in PROTOCOLS.iter().enumerate() {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS
                .iter()
                .map(|b| b.to_string())
                .chain(["+Inf".to_owned()])
                .enumerate()
            {
                cumulative += self.latency_buckets[p][i].load(Ordering::Relaxed);
                let _ = writeln!(
                    text,
                    "{name}_bucket{{protocol=\"{protocol}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let sum = self.latency_sum_micros[p].load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(text, "{name}_sum{{protocol=\"{protocol}\"}} {sum}");
            let _ = writeln!(text, "{name}_count{{protocol=\"{protocol}\"}} {cumulative}");
        }
    }
}
