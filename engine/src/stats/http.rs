//! The HTTP front-end's counters and latency histogram, per shard, merged like the rest.
//!
//! Owns: `HttpStats`. Must never: be written from anywhere but the shard that owns it.

use super::new_histogram;
use hdrhistogram::Histogram;

#[derive(Debug, Clone)]
pub struct HttpStats {
    /// HTTP connections accepted (admitted) since start.
    pub connections_accepted: u64,
    /// HTTP connections open now (a gauge; summed over shards).
    pub connections_open: u64,
    /// HTTP connections refused at accept (shared per-IP/prefix admission, or
    /// `http.connections_per_shard_max`).
    pub connections_refused: u64,
    /// Responses by status class: 2xx, 3xx, 4xx, 5xx.
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    /// Body bytes handed to the kernel (heads not counted).
    pub body_bytes_sent: u64,
    /// Body chunks sent straight from a file's page-cache mapping, and ones read into a
    /// buffer slot first.
    pub page_cache_sends: u64,
    pub buffer_sends: u64,
    /// Connections closed: idle (`http.idle_timeout_secs`), a head that did not arrive in
    /// time (`http.request_timeout_secs`, slowloris), a send that made no progress for
    /// `send_stall_secs`, a socket or disk error.
    pub closed_idle: u64,
    pub closed_request_timeout: u64,
    pub closed_send_stalled: u64,
    pub closed_error: u64,
    /// Request parsed -> the whole response handed to the kernel, nanoseconds.
    pub request_latency_ns: Histogram<u64>,
}

impl Default for HttpStats {
    fn default() -> Self {
        HttpStats {
            connections_accepted: 0,
            connections_open: 0,
            connections_refused: 0,
            responses_2xx: 0,
            responses_3xx: 0,
            responses_4xx: 0,
            responses_5xx: 0,
            body_bytes_sent: 0,
            page_cache_sends: 0,
            buffer_sends: 0,
            closed_idle: 0,
            closed_request_timeout: 0,
            closed_send_stalled: 0,
            closed_error: 0,
            request_latency_ns: new_histogram(),
        }
    }
}

impl HttpStats {
    /// Counts one response under its status class.
    pub fn responded(&mut self, status: u16) {
        match status / 100 {
            2 => self.responses_2xx += 1,
            3 => self.responses_3xx += 1,
            4 => self.responses_4xx += 1,
            _ => self.responses_5xx += 1,
        }
    }

    pub fn requests(&self) -> u64 {
        self.responses_2xx + self.responses_3xx + self.responses_4xx + self.responses_5xx
    }

    pub fn merge(&mut self, other: &HttpStats) {
        self.connections_accepted += other.connections_accepted;
        self.connections_open += other.connections_open;
        self.connections_refused += other.connections_refused;
        self.responses_2xx += other.responses_2xx;
        self.responses_3xx += other.responses_3xx;
        self.responses_4xx += other.responses_4xx;
        self.responses_5xx += other.responses_5xx;
        self.body_bytes_sent += other.body_bytes_sent;
        self.page_cache_sends += other.page_cache_sends;
        self.buffer_sends += other.buffer_sends;
        self.closed_idle += other.closed_idle;
        self.closed_request_timeout += other.closed_request_timeout;
        self.closed_send_stalled += other.closed_send_stalled;
        self.closed_error += other.closed_error;
        let _ = self.request_latency_ns.add(&other.request_latency_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_every_counter_and_the_histogram() {
        // Proves: merging two shards' HTTP stats sums classes, bytes and latencies.
        let mut a = HttpStats::default();
        let mut b = HttpStats::default();
        a.responded(206);
        b.responded(404);
        b.responded(503);
        b.body_bytes_sent = 7;
        let _ = b.request_latency_ns.record(5_000);
        a.merge(&b);
        assert_eq!(
            (a.responses_2xx, a.responses_4xx, a.responses_5xx),
            (1, 1, 1)
        );
        assert_eq!(a.requests(), 3);
        assert_eq!(a.body_bytes_sent, 7);
        assert_eq!(a.request_latency_ns.len(), 1);
    }
}
