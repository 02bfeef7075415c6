//! `gpuslice metrics`: the exposition (parsed by a real Prometheus text parser) says what the
//! ledger holds, once on stdout and over HTTP, and a damaged tenant is counted, not fatal.

use std::io::{Read, Write};
use std::net::TcpStream;

use gpuslice_ledger::{ComputeSettings, GpuUuid, Limits, Priority, TenantQuota};
use prometheus_parse::{Sample, Scrape, Value};

use crate::util::*;

const GPU: &str = "GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d";

/// Parses an exposition with prometheus-parse.
pub fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not the Prometheus text format ({e}):\n{text}"))
}

/// The value of the one sample of `metric` whose labels include `labels`; panics unless
/// there is exactly one.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:#?}");
    match found[0].value {
        Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric}: unexpected {other:?}"),
    }
}

/// A ledger with tenant `team-a` (1 GiB quota, one process holding 300 MiB, one idle, one
/// refusal) and tenant `free` (no quota, nothing used): what the status tests put there.
fn populated(t: &TestDir) -> impl Sized {
    let ledger = t.ledger();
    let a = tenant("team-a");
    let gpu = GpuUuid::parse(GPU).unwrap();
    // The quota gives what the process publishes below (observers cap what a process says
    // by its quota).
    let quota = TenantQuota {
        defaults: Limits {
            memory_bytes: Some(GIB),
            compute_share_permille: Some(250),
            priority: Some(Priority::High),
            ..Limits::default()
        },
        per_gpu: vec![],
    };
    ledger.write_quota(&a, &quota).unwrap();
    let usage = ledger.open_usage(&a).unwrap();
    let slot = usage.claim_slot().unwrap();
    let index = usage.register_gpu(&gpu).unwrap();
    slot.try_reserve(index, 300 * MIB, GIB).unwrap();
    usage.record_oom(index);
    slot.publish_compute(
        index,
        ComputeSettings {
            share_permille: Some(250),
            limit_permille: Some(500),
            priority: Some(Priority::High),
        },
    );
    slot.add_gpu_time(index, 1_500_000_000);
    usage.add_throttled(index, 20_000_000);
    let idle = usage.claim_slot().unwrap();
    let free = ledger.open_usage(&tenant("free")).unwrap();
    let free_index = free.register_gpu(&gpu).unwrap();
    let free_slot = free.claim_slot().unwrap();
    free_slot
        .try_reserve(free_index, 5 * MIB, u64::MAX)
        .unwrap();
    (slot, idle, free_slot)
}

/// The numbers of [`populated`], checked in a scrape.
fn check_populated(scrape: &Scrape) {
    let a = [("tenant", "team-a"), ("UUID", GPU)];
    assert_eq!(
        value(scrape, "gpuslice_memory_used_bytes", &a),
        (300 * MIB) as f64
    );
    assert_eq!(value(scrape, "gpuslice_memory_limit_bytes", &a), GIB as f64);
    assert_eq!(value(scrape, "gpuslice_oom_refusals_total", &a), 1.0);
    assert_eq!(
        value(scrape, "gpuslice_processes", &[("tenant", "team-a")]),
        2.0
    );
    let free = [("tenant", "free"), ("UUID", GPU)];
    assert_eq!(
        value(scrape, "gpuslice_memory_used_bytes", &free),
        (5 * MIB) as f64
    );
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric == "gpuslice_memory_limit_bytes"
                && s.labels.get("tenant") == Some("free")),
        "an unlimited tenant has no limit series"
    );
    assert_eq!(value(scrape, "gpuslice_tenants", &[]), 2.0);
    assert_eq!(value(scrape, "gpuslice_ledger_errors", &[]), 0.0);

    // Compute, in seconds and ratios, as the ledger holds it.
    assert_eq!(value(scrape, "gpuslice_gpu_time_seconds_total", &a), 1.5);
    assert_eq!(value(scrape, "gpuslice_throttled_seconds_total", &a), 0.02);
    assert_eq!(value(scrape, "gpuslice_compute_share_ratio", &a), 0.25);
    assert_eq!(value(scrape, "gpuslice_compute_limit_ratio", &a), 0.5);
    let high = [("tenant", "team-a"), ("UUID", GPU), ("priority", "high")];
    assert_eq!(value(scrape, "gpuslice_compute_priority", &high), 1.0);
    assert_eq!(value(scrape, "gpuslice_gpu_time_seconds_total", &free), 0.0);
    let normal = [("tenant", "free"), ("UUID", GPU), ("priority", "normal")];
    assert_eq!(value(scrape, "gpuslice_compute_priority", &normal), 1.0);
    for metric in [
        "gpuslice_compute_share_ratio",
        "gpuslice_compute_limit_ratio",
    ] {
        assert!(
            !scrape
                .samples
                .iter()
                .any(|s| s.metric == metric && s.labels.get("tenant") == Some("free")),
            "a tenant without {metric} has no series"
        );
    }
}

#[test]
fn metrics_once_says_what_the_ledger_holds() {
    let t = TestDir::new();
    let held = populated(&t);
    let out = finish(
        t.gpuslice(&["metrics", "--once", "--dir"])
            .arg(t.ledger_dir()),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let scrape = parse(&out.stdout);
    check_populated(&scrape);
    // Types and help, as the parser read them.
    let counter = scrape
        .samples
        .iter()
        .find(|s| s.metric == "gpuslice_oom_refusals_total")
        .unwrap();
    assert!(matches!(counter.value, Value::Counter(_)), "{counter:?}");
    let gpu_time = scrape
        .samples
        .iter()
        .find(|s| s.metric == "gpuslice_gpu_time_seconds_total")
        .unwrap();
    assert!(matches!(gpu_time.value, Value::Counter(_)), "{gpu_time:?}");
    for metric in [
        "gpuslice_memory_used_bytes",
        "gpuslice_memory_limit_bytes",
        "gpuslice_oom_refusals_total",
        "gpuslice_gpu_time_seconds_total",
        "gpuslice_throttled_seconds_total",
        "gpuslice_compute_share_ratio",
        "gpuslice_compute_limit_ratio",
        "gpuslice_compute_priority",
        "gpuslice_processes",
        "gpuslice_tenants",
        "gpuslice_ledger_errors",
    ] {
        assert!(scrape.docs.contains_key(metric), "no HELP for {metric}");
        assert!(
            out.stdout.contains(&format!("# TYPE {metric} ")),
            "no TYPE for {metric}"
        );
    }
    drop(held);
}

#[test]
fn metrics_once_without_a_ledger_exits_2() {
    let t = TestDir::new();
    let out = finish(
        t.gpuslice(&["metrics", "--once", "--dir"])
            .arg(t.path().join("missing")),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[test]
fn damaged_tenant_is_counted_as_a_ledger_error_and_the_others_still_report() {
    let t = TestDir::new();
    let held = populated(&t);
    let ledger = t.ledger();
    ledger.open_usage(&tenant("bad-usage")).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(ledger.usage_path(&tenant("bad-usage")))
        .unwrap();
    file.set_len(100).unwrap();

    let out = finish(
        t.gpuslice(&["metrics", "--once", "--dir"])
            .arg(t.ledger_dir()),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let scrape = parse(&out.stdout);
    assert_eq!(value(&scrape, "gpuslice_ledger_errors", &[]), 1.0);
    assert_eq!(value(&scrape, "gpuslice_tenants", &[]), 3.0);
    assert!(!out.stdout.contains("bad-usage"), "{}", out.stdout);
    let a = [("tenant", "team-a"), ("UUID", GPU)];
    assert_eq!(
        value(&scrape, "gpuslice_memory_used_bytes", &a),
        (300 * MIB) as f64
    );
    drop(held);
}

/// Sends one raw HTTP request; returns the status line, the headers (lowercased names) and
/// the body.
fn http(address: &str, request: &str) -> (String, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {answer:?}"));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// `GET path` on `address`: the status code and the body.
pub fn get(address: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"),
    );
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {status:?}"));
    (code, body)
}

/// The address `gpuslice metrics` says it serves on.
fn serving_address(server: &mut Running) -> String {
    let line = server.wait_for_line("serving http://");
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string()
}

#[test]
fn metrics_server_answers_get_metrics_on_an_ephemeral_port() {
    let t = TestDir::new();
    let held = populated(&t);
    let mut server = Running::spawn(
        t.gpuslice(&["metrics", "--listen", "127.0.0.1:0", "--dir"])
            .arg(t.ledger_dir()),
    );
    let address = serving_address(&mut server);

    let (status, headers, body) = http(
        &address,
        "GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    check_populated(&parse(&body));

    // Read afresh at every scrape.
    t.ledger()
        .write_quota(&tenant("later"), &TenantQuota::default())
        .unwrap();
    let (_, _, body) = http(&address, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(value(&parse(&body), "gpuslice_tenants", &[]), 3.0);

    let (status, _, _) = http(&address, "GET / HTTP/1.1\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let (status, headers, _) = http(&address, "POST /metrics HTTP/1.1\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");
    assert!(headers.iter().any(|(k, _)| k == "allow"), "{headers:?}");
    drop(server);
    drop(held);
}

/// Issue 15, item 8: on a new ledger directory (made, nothing in it yet) the server
/// answered 500; a ledger without tenants is a normal state. A directory that does not
/// exist is still an error, which says so.
#[test]
fn metrics_of_an_empty_ledger_directory_report_no_tenants() {
    let t = TestDir::new();
    std::fs::create_dir(t.ledger_dir()).unwrap();
    let out = finish(
        t.gpuslice(&["metrics", "--once", "--dir"])
            .arg(t.ledger_dir()),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(value(&parse(&out.stdout), "gpuslice_tenants", &[]), 0.0);

    let missing = t.path().join("missing");
    let mut server = Running::spawn(
        t.gpuslice(&["metrics", "--listen", "127.0.0.1:0", "--dir"])
            .arg(t.ledger_dir()),
    );
    let address = serving_address(&mut server);
    // An HTTP/1.0 client (no Host header) is answered in its version.
    let (status, _, body) = http(&address, "GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, "HTTP/1.0 200 OK", "{body}");
    assert_eq!(value(&parse(&body), "gpuslice_tenants", &[]), 0.0);
    assert_eq!(value(&parse(&body), "gpuslice_ledger_errors", &[]), 0.0);
    assert!(
        !t.ledger_dir().join("tenants").exists(),
        "metrics wrote into the ledger"
    );

    let out = finish(t.gpuslice(&["metrics", "--once", "--dir"]).arg(&missing));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "the ledger directory {} does not exist",
            missing.display()
        )),
        "{out:?}"
    );
}

/// `/healthz` says the server answers; `/readyz` whether the ledger can be read, and if not
/// why; `/metrics` still answers, with `gpuslice_ready 0`, so that the alert is about the
/// ledger and not a scrape that failed.
#[test]
fn readyz_says_why_the_ledger_cannot_be_read_and_healthz_does_not_care() {
    let t = TestDir::new();
    let mut server = Running::spawn(
        t.gpuslice(&["metrics", "--listen", "127.0.0.1:0", "--dir"])
            .arg(t.ledger_dir()),
    );
    let address = serving_address(&mut server);
    assert_eq!(get(&address, "/healthz"), (200, "ok\n".to_string()));
    let (status, reason) = get(&address, "/readyz");
    assert_eq!(status, 503, "{reason}");
    assert!(
        reason.contains(&t.ledger_dir().display().to_string()) && reason.contains("does not exist"),
        "{reason}"
    );
    let (status, body) = get(&address, "/metrics");
    assert_eq!(status, 200, "{body}");
    let scrape = parse(&body);
    assert_eq!(value(&scrape, "gpuslice_ready", &[]), 0.0);
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric == "gpuslice_tenants"),
        "{body}"
    );

    std::fs::create_dir(t.ledger_dir()).unwrap();
    assert_eq!(get(&address, "/readyz"), (200, "ready\n".to_string()));
    let (_, body) = get(&address, "/metrics");
    let scrape = parse(&body);
    assert_eq!(value(&scrape, "gpuslice_ready", &[]), 1.0);
    assert_eq!(value(&scrape, "gpuslice_tenants", &[]), 0.0);
    let build = scrape
        .samples
        .iter()
        .find(|s| s.metric == "gpuslice_build_info")
        .unwrap();
    assert_eq!(build.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    drop(server);
}

/// A TCP connection to `address` from the local address `source` (another loopback address
/// plays another pod).
fn connect_from(source: &str, address: &str) -> std::io::Result<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{source}:0").parse().expect("source address"))?;
        let address = address.parse().expect("server address");
        let stream = tokio::time::timeout(TIMEOUT, socket.connect(address))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}

/// The node agents serve /healthz (the kubelet's liveness probe) and /metrics on a port any
/// pod of the cluster can reach. One client holding many connections, each sending its
/// request head a byte at a time, used to keep every connection slot taken, and the probe
/// waited behind its connections in the listen backlog until it timed out: three such
/// probes and the kubelet restarts the driver. Connections are now counted per peer
/// address, and one past a limit is closed at once instead of waiting.
#[test]
fn a_client_holding_slow_connections_cannot_keep_the_health_check_out() {
    let t = TestDir::new();
    let mut server = Running::spawn(
        t.gpuslice(&["metrics", "--listen", "127.0.0.1:0", "--dir"])
            .arg(t.ledger_dir()),
    );
    let address = serving_address(&mut server);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow: Vec<_> = (0..64)
        .map(|_| {
            let (address, stop) = (address.clone(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(mut stream) = connect_from("127.0.0.3", &address) else {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    };
                    let mut sent = stream.write_all(b"GET /metrics HTTP/1.1\r\n").is_ok();
                    while sent && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        sent = stream.write_all(b"X").is_ok();
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(2));
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let answer = connect_from("127.0.0.2", &address).and_then(|mut stream| {
            stream.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        });
        assert!(
            answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 200")),
            "the probe got {answer:?} after {:?} beside a client holding slow connections",
            started.elapsed()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in slow {
        let _ = thread.join();
    }
    drop(server);
}
