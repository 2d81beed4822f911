//! Counters and a latency histogram, lock-free, rendered as Prometheus text on the control
//! socket (`metrics` or `GET /metrics`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 12] = [
    25, 50, 100, 250, 500, 1_000, 5_000, 25_000, 100_000, 250_000, 1_000_000, 2_500_000,
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub queries_udp: AtomicU64,
    pub queries_tcp: AtomicU64,
    pub local_answers: AtomicU64,
    pub forwarded: AtomicU64,
    pub cache_hits: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub truncated: AtomicU64,
    pub refused: AtomicU64,
    pub nxdomain: AtomicU64,
    pub servfail: AtomicU64,
    pub formerr: AtomicU64,
    pub reloads: AtomicU64,
    pub bind_errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS_US.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Records how long one query took from receipt to reply.
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        if let Some(i) = BUCKETS_US.iter().position(|b| us <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let counter = |s: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(s, "# HELP netloom_dns_{name} {help}");
            let _ = writeln!(s, "# TYPE netloom_dns_{name} counter");
            let _ = writeln!(s, "netloom_dns_{name} {}", v.load(Relaxed));
        };
        let _ = writeln!(s, "# HELP netloom_dns_queries_total Queries received.");
        let _ = writeln!(s, "# TYPE netloom_dns_queries_total counter");
        let _ = writeln!(
            s,
            "netloom_dns_queries_total{{proto=\"udp\"}} {}",
            self.queries_udp.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "netloom_dns_queries_total{{proto=\"tcp\"}} {}",
            self.queries_tcp.load(Relaxed)
        );
        counter(
            &mut s,
            "local_answers_total",
            "Queries answered from container names.",
            &self.local_answers,
        );
        counter(
            &mut s,
            "forwarded_total",
            "Queries forwarded upstream (cache misses).",
            &self.forwarded,
        );
        counter(
            &mut s,
            "cache_hits_total",
            "Forwardable queries answered from the cache.",
            &self.cache_hits,
        );
        counter(
            &mut s,
            "upstream_errors_total",
            "Upstream attempts that failed (timeout, SERVFAIL, REFUSED, unreachable).",
            &self.upstream_errors,
        );
        counter(
            &mut s,
            "truncated_total",
            "UDP answers sent truncated (client retries over TCP).",
            &self.truncated,
        );
        counter(
            &mut s,
            "refused_total",
            "Queries refused (asker outside every netloom network).",
            &self.refused,
        );
        counter(
            &mut s,
            "nxdomain_total",
            "NXDOMAIN answers.",
            &self.nxdomain,
        );
        counter(
            &mut s,
            "servfail_total",
            "SERVFAIL answers (all upstreams failed).",
            &self.servfail,
        );
        counter(
            &mut s,
            "formerr_total",
            "Malformed or unsupported queries.",
            &self.formerr,
        );
        counter(&mut s, "reloads_total", "Registry reloads.", &self.reloads);
        counter(
            &mut s,
            "bind_errors_total",
            "Listen addresses that could not be bound.",
            &self.bind_errors,
        );
        let _ = writeln!(
            s,
            "# HELP netloom_dns_query_duration_seconds Time from receipt to reply."
        );
        let _ = writeln!(s, "# TYPE netloom_dns_query_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(
                s,
                "netloom_dns_query_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *b as f64 / 1e6
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            s,
            "netloom_dns_query_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "netloom_dns_query_duration_seconds_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "netloom_dns_query_duration_seconds_count {count}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe(Duration::from_micros(40));
        m.observe(Duration::from_millis(2));
        Metrics::inc(&m.queries_udp);
        let t = m.render();
        assert!(t.contains("netloom_dns_queries_total{proto=\"udp\"} 1"));
        assert!(t.contains("le=\"0.00005\"} 1"));
        assert!(t.contains("le=\"0.005\"} 2"));
        assert!(t.contains("netloom_dns_query_duration_seconds_count 2"));
    }
}
