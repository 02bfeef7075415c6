//! `gpuslice metrics`: the ledger as Prometheus metrics, served over HTTP or printed once.
//!
//! Every scrape reads the ledger afresh through [`status::read_report`], so the numbers are
//! those `gpuslice status` would print at that moment, and a tenant whose files are damaged
//! is left out and counted in `gpuslice_ledger_errors` rather than failing the scrape.
//!
//! The server is plain `std::net`: a blocking listener and one thread per connection, at
//! most [`MAX_CONNECTIONS`] at once. A scrape is one small request every few seconds from a
//! handful of Prometheus servers, and reading the ledger is a few `pread`s per tenant, so an
//! async runtime (tokio and an HTTP stack) would add far more code and build time than it
//! could save. The limits on request size and time keep a slow or hostile client from
//! holding a thread for long.

use std::fmt::{Display, Write as _};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};

use crate::cli::MetricsArgs;
use crate::exit::{self, Failure, ResultExt};
use crate::locate;
use crate::status::{self, Report};

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// The largest request head (request line and headers) read.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client has to send its request, and to take the answer.
const REQUEST_TIME: Duration = Duration::from_secs(10);

/// Runs `gpuslice metrics`.
pub fn metrics(args: MetricsArgs) -> Result<u8, Failure> {
    let dir = locate::ledger_dir(args.dir.as_deref()).usage()?;
    if args.once {
        let report = status::read_report_checked(&dir).usage()?;
        return match io::stdout().lock().write_all(render(&report).as_bytes()) {
            Ok(()) => Ok(exit::OK),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(exit::OK),
            Err(e) => Err(anyhow!("could not write to stdout: {e}")).failed(),
        };
    }
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("could not listen on {}", args.listen))
        .usage()?;
    let address = listener
        .local_addr()
        .context("could not read the listening address")
        .failed()?;
    // On stdout, so that scripts (and the tests) listening on port 0 learn the port.
    println!(
        "gpuslice metrics: serving http://{address}/metrics (ledger {})",
        dir.display()
    );
    serve_forever(&listener, dir);
    Ok(exit::OK)
}

/// Serves `GET /metrics` for the ledger at `dir` on `listener`, one thread per connection
/// (at most [`MAX_CONNECTIONS`]), for as long as the process runs. The device plugin serves its
/// metrics with this too.
pub fn serve_forever(listener: &TcpListener, dir: PathBuf) {
    let dir = Arc::new(dir);
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = respond(
                &mut stream,
                "503 Service Unavailable",
                &[],
                "too many connections\n",
            );
            continue;
        }
        let (dir, count) = (Arc::clone(&dir), Arc::clone(&active));
        let spawned = std::thread::Builder::new()
            .name("metrics-connection".into())
            .spawn(move || {
                serve(stream, &dir);
                count.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Answers one connection: one request, then the connection is closed.
fn serve(mut stream: TcpStream, dir: &Path) {
    let deadline = Instant::now() + REQUEST_TIME;
    let _ = stream.set_write_timeout(Some(REQUEST_TIME));
    let Some(head) = read_head(&mut stream, deadline) else {
        let _ = respond(&mut stream, "400 Bad Request", &[], "bad or slow request\n");
        return;
    };
    let mut words = head.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let _ = match (method, path) {
        ("GET" | "HEAD", "/metrics") => match status::read_report_checked(dir) {
            Ok(report) => {
                let body = render(&report);
                let body = if method == "HEAD" { "" } else { body.as_str() };
                respond(
                    &mut stream,
                    "200 OK",
                    &[("Content-Type", CONTENT_TYPE)],
                    body,
                )
            }
            Err(e) => respond(
                &mut stream,
                "500 Internal Server Error",
                &[],
                &format!("{}\n", crate::message(&e)),
            ),
        },
        ("GET" | "HEAD", _) => respond(&mut stream, "404 Not Found", &[], "try /metrics\n"),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            &[("Allow", "GET, HEAD")],
            "only GET and HEAD\n",
        ),
    };
}

/// Reads the request head until its blank line; returns its first line. `None` when it is
/// too large, too slow, or the client went away.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let n = stream.read(&mut buf).ok()?;
        if n == 0 || head.len() + n > MAX_REQUEST_BYTES {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next()?;
    Some(String::from_utf8_lossy(line).trim_end().to_string())
}

/// Writes a whole HTTP/1.1 response and closes the connection.
fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    if !headers.iter().any(|(name, _)| *name == "Content-Type") {
        out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    }
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// One metric family: its HELP and TYPE lines, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(text));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// The report in the Prometheus text exposition format (version 0.0.4).
pub fn render(report: &Report) -> String {
    let readable: Vec<_> = report
        .tenants
        .iter()
        .filter_map(|t| t.usage.as_ref().map(|u| (t.name.as_str(), u)))
        .collect();
    let mut out = String::new();

    let name = "gpuslice_memory_used_bytes";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "GPU memory held by the live processes of a tenant on a GPU.",
    );
    for (tenant, usage) in &readable {
        for gpu in &usage.gpus {
            f.sample(
                name,
                &[("tenant", tenant), ("gpu", &gpu.uuid)],
                gpu.memory_used_bytes,
            );
        }
    }

    let name = "gpuslice_memory_limit_bytes";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "The memory quota of a tenant on a GPU (no series when unlimited).",
    );
    for (tenant, usage) in &readable {
        for gpu in &usage.gpus {
            if let Some(limit) = gpu.memory_limit_bytes {
                f.sample(name, &[("tenant", tenant), ("gpu", &gpu.uuid)], limit);
            }
        }
    }

    let name = "gpuslice_oom_refusals_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "Allocations refused for being over the tenant's limit on a GPU.",
    );
    for (tenant, usage) in &readable {
        for gpu in &usage.gpus {
            f.sample(
                name,
                &[("tenant", tenant), ("gpu", &gpu.uuid)],
                gpu.oom_refusals,
            );
        }
    }

    let name = "gpuslice_gpu_time_seconds_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "GPU time charged to a tenant on a GPU, as the shim measures it (rate() of it is the \
         share of the GPU the tenant gets).",
    );
    for (tenant, usage) in &readable {
        for gpu in &usage.gpus {
            f.sample(
                name,
                &[("tenant", tenant), ("gpu", &gpu.uuid)],
                seconds(gpu.gpu_time_ns),
            );
        }
    }

    let name = "gpuslice_throttled_seconds_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "Wall time a tenant's kernel launches waited for their share on a GPU.",
    );
    for (tenant, usage) in &readable {
        for gpu in &usage.gpus {
            f.sample(
                name,
                &[("tenant", tenant), ("gpu", &gpu.uuid)],
                seconds(gpu.throttled_ns),
            );
        }
    }

    let name = "gpuslice_compute_share_ratio";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "The share of GPU time a tenant is guaranteed on a GPU under contention, as its \
         processes enforce it (no series when it has none).",
    );
    for (tenant, usage) in &readable {
        for gpu in &usage.gpus {
            if let Some(percent) = gpu.compute_share_percent {
                f.sample(
                    name,
                    &[("tenant", tenant), ("gpu", &gpu.uuid)],
                    percent / 100.0,
                );
            }
        }
    }

    let name = "gpuslice_compute_limit_ratio";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "The most GPU time a tenant may use on a GPU, as its processes enforce it (no series \
         when unlimited).",
    );
    for (tenant, usage) in &readable {
        for gpu in &usage.gpus {
            if let Some(percent) = gpu.compute_limit_percent {
                f.sample(
                    name,
                    &[("tenant", tenant), ("gpu", &gpu.uuid)],
                    percent / 100.0,
                );
            }
        }
    }

    let name = "gpuslice_compute_priority";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "1 for the priority a tenant has on a GPU (label priority: high, normal or low).",
    );
    for (tenant, usage) in &readable {
        for gpu in &usage.gpus {
            f.sample(
                name,
                &[
                    ("tenant", tenant),
                    ("gpu", &gpu.uuid),
                    ("priority", gpu.priority.unwrap_or("normal")),
                ],
                1,
            );
        }
    }

    let name = "gpuslice_processes";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "Live processes of a tenant (processes that used a GPU through the shim).",
    );
    for (tenant, usage) in &readable {
        f.sample(name, &[("tenant", tenant)], count(usage.live_processes));
    }

    let name = "gpuslice_tenants";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "Tenants in the ledger, readable or not.",
    );
    f.sample(name, &[], count(report.tenants.len()));

    let name = "gpuslice_ledger_errors";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "Tenants whose ledger files could not be read at this scrape (see gpuslice status).",
    );
    f.sample(name, &[], count(report.tenants.len() - readable.len()));

    if let Some(check) = &report.unenforced {
        let name = "gpuslice_unenforced_check_up";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "1 if the GPUs' processes could be checked for ones outside gpuslice's limits at \
             this scrape, 0 if not (see gpuslice status for why).",
        );
        f.sample(name, &[], u64::from(check.checked));
        if check.checked {
            let name = "gpuslice_unenforced_processes";
            let mut f = Family::new(
                &mut out,
                name,
                "gauge",
                "Processes using a GPU without a live gpuslice slot: not under its limits.",
            );
            f.sample(name, &[], count(check.processes.len()));
            let name = "gpuslice_unenforced_process_memory_bytes";
            let mut f = Family::new(
                &mut out,
                name,
                "gauge",
                "GPU memory held by a process outside gpuslice's limits (label tenant: the \
                 tenant whose container it runs in, empty if none).",
            );
            for p in &check.processes {
                let pid = p.pid.to_string();
                f.sample(
                    name,
                    &[
                        ("gpu", &p.gpu),
                        ("pid", &pid),
                        ("tenant", p.tenant.as_deref().unwrap_or("")),
                    ],
                    p.memory_bytes,
                );
            }
        }
    }
    out
}

/// Nanoseconds as seconds, the base unit Prometheus wants.
fn seconds(ns: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let ns = ns as f64;
    ns / 1e9
}

/// A count as a sample value.
fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A label value escaped for the text format: `\`, `"` and line feeds.
pub fn escape_label(text: &str) -> String {
    text.replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// HELP text escaped for the text format: `\` and line feeds.
fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{GpuReport, SCHEMA_VERSION, TenantReport, TenantUsage};

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("line\nbreak"), r"line\nbreak");
        assert_eq!(escape_label("team-a.1_x"), "team-a.1_x");
    }

    #[test]
    fn exposition_escapes_odd_names_and_omits_unlimited_series() {
        let report = Report {
            version: SCHEMA_VERSION,
            ledger: "/l".into(),
            gets_window_ms: None,
            unenforced: None,
            read_at: std::time::Instant::now(),
            tenants: vec![
                TenantReport {
                    name: "we\"ird\\\n".into(),
                    error: None,
                    usage: Some(TenantUsage {
                        memory_limit_bytes: None,
                        live_processes: 3,
                        compute_share_percent: None,
                        compute_limit_percent: None,
                        priority: None,
                        gpus: vec![GpuReport {
                            uuid: "GPU-x".into(),
                            memory_used_bytes: 7,
                            memory_limit_bytes: None,
                            oom_refusals: 2,
                            compute_share_percent: Some(12.5),
                            compute_limit_percent: None,
                            priority: None,
                            compute_source: "quota",
                            gpu_time_ns: 1_500_000_000,
                            throttled_ns: 1,
                            gets_percent: None,
                            processes: vec![],
                        }],
                    }),
                },
                TenantReport {
                    name: "broken".into(),
                    error: Some("bad".into()),
                    usage: None,
                },
            ],
        };
        let text = render(&report);
        assert!(
            text.contains(r#"gpuslice_memory_used_bytes{tenant="we\"ird\\\n",gpu="GPU-x"} 7"#),
            "{text}"
        );
        assert!(
            !text.contains("gpuslice_memory_limit_bytes{"),
            "unlimited: {text}"
        );
        assert!(text.contains("gpuslice_tenants 2\n"), "{text}");
        let gpu = r#"{tenant="we\"ird\\\n",gpu="GPU-x"}"#;
        for sample in [
            format!("gpuslice_gpu_time_seconds_total{gpu} 1.5\n"),
            format!("gpuslice_throttled_seconds_total{gpu} 0.000000001\n"),
            format!("gpuslice_compute_share_ratio{gpu} 0.125\n"),
        ] {
            assert!(text.contains(&sample), "{sample} in {text}");
        }
        assert!(
            !text.contains("gpuslice_compute_limit_ratio{"),
            "unlimited: {text}"
        );
        assert!(text.contains(r#"priority="normal"} 1"#), "{text}");
        assert!(text.contains("gpuslice_ledger_errors 1\n"), "{text}");
        assert!(!text.contains("broken"), "{text}");
        for line in text.lines() {
            assert!(!line.is_empty());
        }
    }

    #[test]
    fn unenforced_processes_are_counted_and_each_named_by_gpu_pid_and_tenant() {
        let report = |check| Report {
            version: SCHEMA_VERSION,
            ledger: "/l".into(),
            gets_window_ms: None,
            unenforced: Some(check),
            read_at: std::time::Instant::now(),
            tenants: Vec::new(),
        };
        let text = render(&report(crate::unenforced::Check {
            checked: true,
            reason: None,
            processes: vec![crate::unenforced::UnenforcedProcess {
                pid: 4242,
                gpu: "GPU-x".into(),
                memory_bytes: 1024,
                tenant: Some("pod-a".into()),
                gone: false,
            }],
            unresolved: 0,
        }));
        assert!(text.contains("gpuslice_unenforced_check_up 1\n"), "{text}");
        assert!(text.contains("gpuslice_unenforced_processes 1\n"), "{text}");
        assert!(
            text.contains(
                r#"gpuslice_unenforced_process_memory_bytes{gpu="GPU-x",pid="4242",tenant="pod-a"} 1024"#
            ),
            "{text}"
        );
        let text = render(&report(crate::unenforced::Check {
            checked: false,
            reason: Some("no NVML".into()),
            processes: Vec::new(),
            unresolved: 0,
        }));
        assert!(text.contains("gpuslice_unenforced_check_up 0\n"), "{text}");
        assert!(!text.contains("gpuslice_unenforced_processes "), "{text}");
    }
}
