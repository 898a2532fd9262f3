//! Prometheus metrics: counters and histograms kept in memory, and a small HTTP
//! server that renders them in the text exposition format (version 0.0.4) on
//! `GET /metrics`.
//!
//! The format is simple enough to write by hand, so no metrics crate is pulled in;
//! the HTTP side uses hyper, which berthd already links through tonic and the
//! streaming server.
//!
//! Recording goes through [`global()`], so a hook is one line wherever an event
//! happens (the RPC layer, PullImage, the container monitor watcher). Pod and
//! container counts by state are read from the daemon's index at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the RPC latency buckets.
const RPC_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Upper bounds (seconds) of the image pull duration buckets.
const PULL_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Distinct (method, code) series kept; calls beyond that count as method `other`, so
/// a client inventing method names cannot grow the exposition without bound.
const MAX_RPC_SERIES: usize = 512;
/// How long a scraper may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[slot] += 1;
        self.sum += value;
    }

    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `_bucket`, `_sum` and `_count` lines; `labels` is `k="v",...` or empty.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                float(*bound)
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count()
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", float(self.sum));
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

/// Pods and containers by state, read from the daemon's index at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Pod sandboxes by state (`ready`, `notready`).
    pub pods: BTreeMap<&'static str, u64>,
    /// Containers by state (`created`, `running`, `exited`, `unknown`).
    pub containers: BTreeMap<&'static str, u64>,
}

/// Reads [`StateCounts`] at scrape time.
pub type StateSource = Arc<dyn Fn() -> StateCounts + Send + Sync>;

/// Everything berthd counts.
#[derive(Debug)]
pub struct Metrics {
    started: SystemTime,
    /// (service, method, code) → latency histogram.
    rpcs: Mutex<BTreeMap<(String, String, String), Histogram>>,
    /// `success` / `failure` → pull duration histogram.
    pulls: Mutex<BTreeMap<&'static str, Histogram>>,
    pull_bytes: AtomicU64,
    monitor_deaths: AtomicU64,
    monitors_reattached: AtomicU64,
    /// Container exits by reason (`Completed`, `Error`, `OOMKilled`, ...).
    exits: Mutex<BTreeMap<String, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The process-wide metrics berthd records into and serves.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    /// Empty metrics, with the start time set to now.
    pub fn new() -> Self {
        Self {
            started: SystemTime::now(),
            rpcs: Mutex::new(BTreeMap::new()),
            pulls: Mutex::new(BTreeMap::new()),
            pull_bytes: AtomicU64::new(0),
            monitor_deaths: AtomicU64::new(0),
            monitors_reattached: AtomicU64::new(0),
            exits: Mutex::new(BTreeMap::new()),
        }
    }

    /// One finished RPC: `path` is the HTTP/2 path (`/runtime.v1.RuntimeService/Version`),
    /// `code` the gRPC status code's name (`OK`, `NotFound`, ...).
    pub fn observe_rpc(&self, path: &str, code: &str, elapsed: Duration) {
        let (service, method) = split_path(path);
        let mut rpcs = lock(&self.rpcs);
        let mut key = (service.to_owned(), method.to_owned(), code.to_owned());
        if !rpcs.contains_key(&key) && rpcs.len() >= MAX_RPC_SERIES {
            key = ("other".to_owned(), "other".to_owned(), code.to_owned());
        }
        rpcs.entry(key)
            .or_insert_with(|| Histogram::new(RPC_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    /// One finished image pull; `bytes` is the pulled image's size when it succeeded.
    pub fn observe_pull(&self, success: bool, elapsed: Duration, bytes: Option<u64>) {
        let result = if success { "success" } else { "failure" };
        lock(&self.pulls)
            .entry(result)
            .or_insert_with(|| Histogram::new(PULL_BUCKETS))
            .observe(elapsed.as_secs_f64());
        if let Some(b) = bytes {
            self.pull_bytes.fetch_add(b, Ordering::Relaxed);
        }
    }

    /// A container's berth-monitor died before the container did.
    pub fn monitor_died(&self) {
        self.monitor_deaths.fetch_add(1, Ordering::Relaxed);
    }

    /// berthd reattached to a live monitor after it restarted.
    pub fn monitor_reattached(&self) {
        self.monitors_reattached.fetch_add(1, Ordering::Relaxed);
    }

    /// A container exited with this CRI reason.
    pub fn container_exited(&self, reason: &str) {
        *lock(&self.exits).entry(reason.to_owned()).or_insert(0) += 1;
    }

    /// The text exposition of everything, with `states` as the current gauges.
    pub fn render(&self, states: &StateCounts) -> String {
        let mut out = String::new();
        let started = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        header(
            &mut out,
            "berth_build_info",
            "gauge",
            "Always 1; the version label is berthd's version.",
        );
        let _ = writeln!(
            out,
            "berth_build_info{{version=\"{}\"}} 1",
            escape(env!("CARGO_PKG_VERSION"))
        );
        single(
            &mut out,
            "berth_start_time_seconds",
            "gauge",
            "When this berthd started, in seconds since the Unix epoch.",
            float(started),
        );

        let rpcs = lock(&self.rpcs).clone();
        header(
            &mut out,
            "berth_grpc_requests_total",
            "counter",
            "CRI gRPC calls handled, by service, method and gRPC status code.",
        );
        for ((service, method, code), h) in &rpcs {
            let _ = writeln!(
                out,
                "berth_grpc_requests_total{{{}}} {}",
                rpc_labels(service, method, code),
                h.count()
            );
        }
        header(
            &mut out,
            "berth_grpc_request_duration_seconds",
            "histogram",
            "Time from a call's arrival until its handler answered (for server streams: until the stream started).",
        );
        for ((service, method, code), h) in &rpcs {
            h.render(
                &mut out,
                "berth_grpc_request_duration_seconds",
                &rpc_labels(service, method, code),
            );
        }
        let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
        for ((_, _, code), h) in &rpcs {
            if code != "OK" {
                *errors.entry(code).or_insert(0) += h.count();
            }
        }
        labelled(
            &mut out,
            "berth_grpc_errors_total",
            "counter",
            "CRI gRPC calls that failed, by gRPC status code (the kind of error).",
            "code",
            errors,
        );

        labelled(
            &mut out,
            "berth_pods",
            "gauge",
            "Pod sandboxes by state.",
            "state",
            states.pods.iter().map(|(s, n)| (*s, *n)),
        );
        labelled(
            &mut out,
            "berth_containers",
            "gauge",
            "Containers by state.",
            "state",
            states.containers.iter().map(|(s, n)| (*s, *n)),
        );

        let pulls = lock(&self.pulls).clone();
        labelled(
            &mut out,
            "berth_image_pulls_total",
            "counter",
            "PullImage calls that ended, by result.",
            "result",
            pulls.iter().map(|(result, h)| (*result, h.count())),
        );
        header(
            &mut out,
            "berth_image_pull_duration_seconds",
            "histogram",
            "Duration of PullImage calls, by result.",
        );
        for (result, h) in &pulls {
            h.render(
                &mut out,
                "berth_image_pull_duration_seconds",
                &format!("result=\"{result}\""),
            );
        }
        single(
            &mut out,
            "berth_image_pull_bytes_total",
            "counter",
            "Size of the images pulled successfully (compressed layers, config and manifest).",
            self.pull_bytes.load(Ordering::Relaxed),
        );

        single(
            &mut out,
            "berth_monitor_deaths_total",
            "counter",
            "Containers whose berth-monitor died before them (the container is then killed).",
            self.monitor_deaths.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "berth_monitor_reattached_total",
            "counter",
            "Live berth-monitors berthd reattached to when it (re)started.",
            self.monitors_reattached.load(Ordering::Relaxed),
        );
        labelled(
            &mut out,
            "berth_container_exits_total",
            "counter",
            "Container exits seen by this berthd, by CRI reason.",
            "reason",
            lock(&self.exits).iter().map(|(r, n)| (r.as_str(), *n)),
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A metric of one unlabelled series.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A metric of one series per value of the label `label`.
fn labelled<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (&'a str, u64)>,
) {
    header(out, name, kind, help);
    for (value, n) in series {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape(value));
    }
}

fn rpc_labels(service: &str, method: &str, code: &str) -> String {
    format!(
        "service=\"{}\",method=\"{}\",code=\"{}\"",
        escape(service),
        escape(method),
        escape(code)
    )
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    trimmed.split_once('/').unwrap_or(("", trimmed))
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: Go-style floats (`0.005`, `1`, `+Inf`).
fn float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.is_nan() {
        "NaN".to_owned()
    } else {
        format!("{v}")
    }
}

/// Why the metrics server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen for /metrics on {addr}: {source}")]
    Bind {
        /// `metrics.address`.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running metrics server; it stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves `metrics` plus the gauges from `states` on `/metrics`.
    pub async fn start(
        addr: SocketAddr,
        metrics: &'static Metrics,
        states: StateSource,
    ) -> Result<Self, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        let task = tokio::spawn(accept_loop(listener, metrics, states));
        Ok(Self { addr, task })
    }

    /// The bound address (the real port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    metrics: &'static Metrics,
    states: StateSource,
) {
    loop {
        let stream =
            crate::listener::accept_or_back_off("metrics server", || listener.accept()).await;
        let states = Arc::clone(&states);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let states = Arc::clone(&states);
                async move { Ok::<_, std::convert::Infallible>(respond(&req, metrics, &states)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

fn respond<B>(
    req: &http::Request<B>,
    metrics: &Metrics,
    states: &StateSource,
) -> http::Response<String> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&http::Method::GET | &http::Method::HEAD, "/metrics") => {
            let body = metrics.render(&states());
            (http::StatusCode::OK, CONTENT_TYPE, body)
        }
        (_, "/metrics") => (
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD are served\n".to_owned(),
        ),
        _ => (
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "berthd serves its metrics on /metrics\n".to_owned(),
        ),
    };
    let body = if req.method() == http::Method::HEAD {
        String::new()
    } else {
        body
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line is a comment or `name{labels} value` with a parseable value.
    fn assert_exposition(text: &str) {
        for line in text.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            assert!(
                value == "+Inf" || value.parse::<f64>().is_ok(),
                "value of {line:?}"
            );
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "metric name in {line:?}"
            );
            if name_end < series.len() {
                assert!(series.ends_with('}'), "labels closed in {line:?}");
            }
        }
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn rpcs_are_counted_per_method_and_code_with_cumulative_buckets() {
        let m = Metrics::new();
        let path = "/runtime.v1.RuntimeService/PodSandboxStatus";
        m.observe_rpc(path, "OK", Duration::from_millis(3));
        m.observe_rpc(path, "OK", Duration::from_millis(200));
        m.observe_rpc(path, "NotFound", Duration::from_micros(500));
        let text = m.render(&StateCounts::default());
        assert_exposition(&text);
        let ok = r#"service="runtime.v1.RuntimeService",method="PodSandboxStatus",code="OK""#;
        assert_eq!(
            sample(&text, &format!("berth_grpc_requests_total{{{ok}}}")),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("berth_grpc_request_duration_seconds_bucket{{{ok},le=\"0.005\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("berth_grpc_request_duration_seconds_bucket{{{ok},le=\"0.25\"}}")
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("berth_grpc_request_duration_seconds_bucket{{{ok},le=\"+Inf\"}}")
            ),
            Some(2.0)
        );
        let sum = sample(
            &text,
            &format!("berth_grpc_request_duration_seconds_sum{{{ok}}}"),
        )
        .expect("sum");
        assert!((sum - 0.203).abs() < 1e-9, "{sum}");
        assert_eq!(
            sample(&text, r#"berth_grpc_errors_total{code="NotFound"}"#),
            Some(1.0)
        );
        assert_eq!(sample(&text, r#"berth_grpc_errors_total{code="OK"}"#), None);
    }

    #[test]
    fn invented_methods_cannot_grow_the_series_without_bound() {
        let m = Metrics::new();
        for i in 0..(MAX_RPC_SERIES + 50) {
            m.observe_rpc(&format!("/x.Y/M{i}"), "Unimplemented", Duration::ZERO);
        }
        assert_eq!(lock(&m.rpcs).len(), MAX_RPC_SERIES + 1);
        let text = m.render(&StateCounts::default());
        assert_eq!(
            sample(
                &text,
                r#"berth_grpc_requests_total{service="other",method="other",code="Unimplemented"}"#
            ),
            Some(50.0)
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.observe_rpc("/a\"b/c\\d\ne", "OK", Duration::ZERO);
        let text = m.render(&StateCounts::default());
        assert_exposition(&text);
        assert!(
            text.contains(r#"service="a\"b",method="c\\d\ne""#),
            "{text}"
        );
    }

    #[test]
    fn pulls_monitors_and_states_are_rendered() {
        let m = Metrics::new();
        m.observe_pull(true, Duration::from_millis(700), Some(1234));
        m.observe_pull(false, Duration::from_secs(2), None);
        m.monitor_died();
        m.monitor_reattached();
        m.container_exited("Completed");
        m.container_exited("Completed");
        let states = StateCounts {
            pods: BTreeMap::from([("ready", 2), ("notready", 1)]),
            containers: BTreeMap::from([("running", 3)]),
        };
        let text = m.render(&states);
        assert_exposition(&text);
        assert_eq!(sample(&text, "berth_image_pull_bytes_total"), Some(1234.0));
        assert_eq!(
            sample(&text, r#"berth_image_pulls_total{result="failure"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"berth_image_pull_duration_seconds_bucket{result="success",le="1"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"berth_image_pull_duration_seconds_bucket{result="success",le="0.5"}"#
            ),
            Some(0.0)
        );
        assert_eq!(sample(&text, "berth_monitor_deaths_total"), Some(1.0));
        assert_eq!(sample(&text, "berth_monitor_reattached_total"), Some(1.0));
        assert_eq!(
            sample(&text, r#"berth_container_exits_total{reason="Completed"}"#),
            Some(2.0)
        );
        assert_eq!(sample(&text, r#"berth_pods{state="ready"}"#), Some(2.0));
        assert_eq!(
            sample(&text, r#"berth_containers{state="running"}"#),
            Some(3.0)
        );
    }

    #[test]
    fn only_get_metrics_is_served() {
        let m = Metrics::new();
        let states: StateSource = Arc::new(StateCounts::default);
        let req = |method: &str, path: &str| {
            http::Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .expect("request")
        };
        let ok = respond(&req("GET", "/metrics"), &m, &states);
        assert_eq!(ok.status(), http::StatusCode::OK);
        assert_eq!(ok.headers()[http::header::CONTENT_TYPE], CONTENT_TYPE);
        assert!(ok.body().contains("berth_build_info"));
        assert_eq!(
            respond(&req("POST", "/metrics"), &m, &states).status(),
            http::StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            respond(&req("GET", "/"), &m, &states).status(),
            http::StatusCode::NOT_FOUND
        );
    }
}
