//! Prometheus metrics: request counts by method and status, errors, latency histograms, and
//! gauges read from the store at scrape time. Rendered in the text exposition format by hand:
//! a handful of series does not need a metrics library.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket bounds in seconds: plugin calls take from well under a millisecond
/// (Activate) to tens of milliseconds (CreateEndpoint: a veth pair and a firewall batch).
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default, Clone)]
struct MethodStats {
    by_status: BTreeMap<u16, u64>,
    errors: u64,
    /// Cumulative counts per bucket bound (Prometheus `le` semantics), then +Inf = count.
    buckets: [u64; BUCKETS.len()],
    sum_seconds: f64,
    count: u64,
}

/// Request statistics, shared by every listener.
#[derive(Debug, Default)]
pub struct Metrics {
    methods: Mutex<BTreeMap<String, MethodStats>>,
    /// Firewall items someone else removed and the guard put back.
    firewall_restores: std::sync::atomic::AtomicU64,
}

/// Values read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// (network id, driver, endpoints).
    pub networks: Vec<(String, String, usize)>,
    pub ready: bool,
    pub uptime_seconds: f64,
}

impl Metrics {
    /// Records one request. `method` is the protocol method ("NetworkDriver.Join") or
    /// "unknown" for paths that matched none (kept as one series so scans cannot flood it).
    pub fn observe(&self, method: &str, status: u16, elapsed: Duration) {
        let Ok(mut m) = self.methods.lock() else {
            return;
        };
        let s = m.entry(method.to_string()).or_default();
        *s.by_status.entry(status).or_default() += 1;
        if status >= 400 {
            s.errors += 1;
        }
        let secs = elapsed.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                s.buckets[i] += 1;
            }
        }
        s.sum_seconds += secs;
        s.count += 1;
    }

    /// Counts firewall items the guard had to put back.
    pub fn add_firewall_restores(&self, n: u64) {
        self.firewall_restores
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests seen for `method` (tests and /health).
    pub fn count(&self, method: &str) -> u64 {
        self.methods
            .lock()
            .ok()
            .and_then(|m| m.get(method).map(|s| s.count))
            .unwrap_or(0)
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let methods = self.methods.lock().map(|m| m.clone()).unwrap_or_default();
        let mut out = String::new();
        let _ = writeln!(out, "# HELP netloom_plugin_requests_total Docker plugin requests by method and HTTP status.");
        let _ = writeln!(out, "# TYPE netloom_plugin_requests_total counter");
        for (m, s) in &methods {
            for (code, n) in &s.by_status {
                let _ = writeln!(
                    out,
                    "netloom_plugin_requests_total{{method=\"{}\",code=\"{code}\"}} {n}",
                    esc(m)
                );
            }
        }
        let _ = writeln!(out, "# HELP netloom_plugin_request_errors_total Docker plugin requests that failed (status >= 400).");
        let _ = writeln!(out, "# TYPE netloom_plugin_request_errors_total counter");
        for (m, s) in &methods {
            let _ = writeln!(
                out,
                "netloom_plugin_request_errors_total{{method=\"{}\"}} {}",
                esc(m),
                s.errors
            );
        }
        let _ = writeln!(out, "# HELP netloom_plugin_request_duration_seconds Time to answer a Docker plugin request.");
        let _ = writeln!(
            out,
            "# TYPE netloom_plugin_request_duration_seconds histogram"
        );
        for (m, s) in &methods {
            let m = esc(m);
            for (le, n) in BUCKETS.iter().zip(s.buckets.iter()) {
                let _ = writeln!(out, "netloom_plugin_request_duration_seconds_bucket{{method=\"{m}\",le=\"{le}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "netloom_plugin_request_duration_seconds_bucket{{method=\"{m}\",le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "netloom_plugin_request_duration_seconds_sum{{method=\"{m}\"}} {}",
                s.sum_seconds
            );
            let _ = writeln!(
                out,
                "netloom_plugin_request_duration_seconds_count{{method=\"{m}\"}} {}",
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP netloom_network_endpoints Endpoints per Docker network."
        );
        let _ = writeln!(out, "# TYPE netloom_network_endpoints gauge");
        for (id, driver, n) in &g.networks {
            let _ = writeln!(
                out,
                "netloom_network_endpoints{{network=\"{}\",driver=\"{}\"}} {n}",
                esc(id),
                esc(driver)
            );
        }
        let _ = writeln!(
            out,
            "# HELP netloom_networks Docker networks netloomd manages."
        );
        let _ = writeln!(out, "# TYPE netloom_networks gauge");
        let _ = writeln!(out, "netloom_networks {}", g.networks.len());
        let _ = writeln!(
            out,
            "# HELP netloom_ready Whether startup reconciliation has finished (1) or not (0)."
        );
        let _ = writeln!(out, "# TYPE netloom_ready gauge");
        let _ = writeln!(out, "netloom_ready {}", u8::from(g.ready));
        let _ = writeln!(
            out,
            "# HELP netloom_uptime_seconds Seconds since netloomd started."
        );
        let _ = writeln!(out, "# TYPE netloom_uptime_seconds gauge");
        let _ = writeln!(out, "netloom_uptime_seconds {:.3}", g.uptime_seconds);
        let _ = writeln!(
            out,
            "# HELP netloom_firewall_restores_total Firewall items removed by someone else and put back."
        );
        let _ = writeln!(out, "# TYPE netloom_firewall_restores_total counter");
        let _ = writeln!(
            out,
            "netloom_firewall_restores_total {}",
            self.firewall_restores
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        out
    }
}

/// Escapes a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.observe("NetworkDriver.Join", 200, Duration::from_millis(3));
        m.observe("NetworkDriver.Join", 400, Duration::from_millis(30));
        let text = m.render(&Gauges {
            networks: vec![("n1".into(), "bridge".into(), 2)],
            ready: true,
            uptime_seconds: 1.0,
        });
        assert!(
            text.contains(
                "netloom_plugin_requests_total{method=\"NetworkDriver.Join\",code=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("netloom_plugin_request_errors_total{method=\"NetworkDriver.Join\"} 1")
        );
        assert!(text.contains("netloom_plugin_request_duration_seconds_bucket{method=\"NetworkDriver.Join\",le=\"0.005\"} 1"));
        assert!(text.contains("netloom_plugin_request_duration_seconds_bucket{method=\"NetworkDriver.Join\",le=\"+Inf\"} 2"));
        assert!(text.contains("netloom_network_endpoints{network=\"n1\",driver=\"bridge\"} 2"));
        assert!(text.contains("netloom_ready 1"));
        assert_eq!(m.count("NetworkDriver.Join"), 2);
        assert_eq!(esc("a\"b\\"), "a\\\"b\\\\");
    }
}
