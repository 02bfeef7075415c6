//! `gpuslice status`: the [`report`](crate::report) of every tenant in the ledger, as a
//! table or as JSON.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::{Context, anyhow};

use crate::cli::StatusArgs;
use crate::exit::{self, Failure, ResultExt};
use crate::locate;
use crate::quantity::format_size;
use crate::unenforced;

use crate::report::{GpuReport, Report, check_unenforced, read_sampled_report};

/// Runs `gpuslice status`.
pub fn status(args: StatusArgs) -> Result<u8, Failure> {
    let dir = locate::ledger_dir(args.dir.as_deref()).usage()?;
    let mut report = read_sampled_report(&dir, Duration::from_millis(args.sample)).usage()?;
    check_unenforced(&dir, &mut report);
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&report)
            .context("could not encode the report as JSON")
            .failed()?;
        json.push('\n');
        json
    } else {
        render_table(&report)
    };
    match io::stdout().lock().write_all(text.as_bytes()) {
        // A reader that stopped reading (`| head`) is not a failure.
        Ok(()) => Ok(exit::OK),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(exit::OK),
        Err(e) => Err(anyhow!("could not write to stdout: {e}")).failed(),
    }
}

/// The table's width.
const WIDTH: usize = 80;
/// The first column: two spaces and a 40-character UUID.
const NAME_WIDTH: usize = 42;

/// One row of the table: a label, then the USED, LIMIT and OOM columns.
fn row(out: &mut String, label: &str, used: &str, limit: &str, oom: &str) {
    let line = format!("{label:<NAME_WIDTH$}  {used:>10}  {limit:>10}  {oom:>8}");
    out.push_str(line.trim_end());
    out.push('\n');
}

/// A limit for the table.
fn limit_text(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_string(), format_size)
}

/// A duration in nanoseconds, short: `0 s`, `250 ms`, `12.3 s`, `2.5 h`.
pub fn format_duration(ns: u64) -> String {
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;
    #[allow(clippy::cast_precision_loss)]
    let tenths = |unit: u64| ns as f64 / unit as f64;
    match ns {
        0 => "0 s".into(),
        n if n < S => format!("{} ms", n / MS),
        n if n < 3600 * S => format!("{:.1} s", tenths(S)),
        _ => format!("{:.1} h", tenths(3600 * S)),
    }
}

/// A percent figure of the report (30.0, 12.5) as the table writes it: `30%`, `12.5%`.
pub fn percent_text(percent: Option<f64>) -> String {
    match percent {
        None => "-".into(),
        Some(p) if p.fract() == 0.0 => format!("{p:.0}%"),
        Some(p) => format!("{p:.1}%"),
    }
}

/// The compute line under a GPU row (or a tenant with no GPU used yet).
fn compute_line(
    share: Option<f64>,
    limit: Option<f64>,
    priority: Option<&str>,
    gpu: Option<&GpuReport>,
) -> String {
    let mut text = format!(
        "share {}, limit {}, priority {}",
        share.map_or("none".into(), |p| percent_text(Some(p))),
        limit.map_or("none".into(), |p| percent_text(Some(p))),
        priority.unwrap_or("normal")
    );
    if let Some(gpu) = gpu {
        if let Some(gets) = gpu.gets_percent {
            text.push_str(&format!("; gets {}", percent_text(Some(gets))));
        }
        text.push_str(&format!(
            "; GPU time {}, throttled {}",
            format_duration(gpu.gpu_time_ns),
            format_duration(gpu.throttled_ns)
        ));
    }
    text
}

/// The report as an aligned table of at most 80 columns.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    wrap(&mut out, &format!("ledger {}", report.ledger), "", "  ");
    if let Some(ms) = report.gets_window_ms {
        out.push_str(&format!(
            "gets: share of the GPU's time received in the last {ms} ms\n"
        ));
    }
    row(&mut out, "TENANT / GPU / PROCESS", "USED", "LIMIT", "OOM");
    if report.tenants.is_empty() {
        out.push_str("(no tenants)\n");
    }
    for tenant in &report.tenants {
        let Some(usage) = &tenant.usage else {
            out.push_str(&tenant.name);
            out.push('\n');
            let error = tenant.error.as_deref().unwrap_or("unreadable");
            wrap(&mut out, &format!("error: {error}"), "  ", "    ");
            continue;
        };
        match usage.live_processes {
            0 => out.push_str(&tenant.name),
            1 => out.push_str(&format!("{} (1 process)", tenant.name)),
            n => out.push_str(&format!("{} ({n} processes)", tenant.name)),
        }
        out.push('\n');
        if usage.gpus.is_empty() {
            row(
                &mut out,
                "  no GPU used yet",
                "-",
                &limit_text(usage.memory_limit_bytes),
                "-",
            );
            let line = compute_line(
                usage.compute_share_percent,
                usage.compute_limit_percent,
                usage.priority,
                None,
            );
            wrap(&mut out, &line, "    ", "      ");
        }
        for gpu in &usage.gpus {
            row(
                &mut out,
                &format!("  {}", gpu.uuid),
                &format_size(gpu.memory_used_bytes),
                &limit_text(gpu.memory_limit_bytes),
                &gpu.oom_refusals.to_string(),
            );
            let line = compute_line(
                gpu.compute_share_percent,
                gpu.compute_limit_percent,
                gpu.priority,
                Some(gpu),
            );
            wrap(&mut out, &line, "    ", "      ");
            for p in &gpu.processes {
                row(
                    &mut out,
                    &format!("    slot {}, pid {}", p.slot, p.pid),
                    &format_size(p.memory_bytes),
                    "",
                    "",
                );
            }
        }
    }
    if let Some(check) = &report.unenforced {
        render_unenforced(&mut out, check);
    }
    out
}

/// The unenforced processes, loudly, or why they could not be looked for.
fn render_unenforced(out: &mut String, check: &unenforced::Check) {
    if let Some(reason) = &check.reason {
        wrap(
            out,
            &format!("unenforced processes: not checked: {reason}"),
            "",
            "  ",
        );
        return;
    }
    if !check.processes.is_empty() {
        out.push_str(&format!(
            "UNENFORCED: {} process(es) use a GPU without gpuslice's limits\n",
            check.processes.len()
        ));
    }
    for p in &check.processes {
        wrap(out, &unenforced::describe(p), "  ", "    ");
    }
    if check.unresolved > 0 {
        wrap(
            out,
            &format!(
                "{} GPU process(es) could not be looked up (gone, or hidden from this \
                 process): not checked",
                check.unresolved
            ),
            "",
            "  ",
        );
    }
}

/// The units a figure of the table is written with.
const UNITS: [&str; 9] = ["ns", "ms", "s", "h", "B", "KiB", "MiB", "GiB", "TiB"];

/// The words of `text` for wrapping, a figure and its unit kept as one (`0 s`, `250 ms,`,
/// `3 GiB`): a line must not end with a bare number whose unit starts the next one.
fn unbroken_words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        let unit = word.trim_end_matches([',', ';', '.', ')']);
        let after_figure = words
            .last()
            .is_some_and(|last| last.ends_with(|c: char| c.is_ascii_digit()));
        match words.last_mut() {
            Some(last) if after_figure && UNITS.contains(&unit) => {
                last.push(' ');
                last.push_str(word);
            }
            _ => words.push(word.to_string()),
        }
    }
    words
}

/// Appends `text` wrapped at [`WIDTH`] columns: the first line after `first`, the others
/// after `rest`. A word longer than a whole line (a long path) is cut, filling each line.
fn wrap(out: &mut String, text: &str, first: &str, rest: &str) {
    let longest = WIDTH.saturating_sub(rest.chars().count()).max(1);
    let mut line = first.to_string();
    let mut empty = true;
    for word in unbroken_words(text) {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let separator = usize::from(!empty);
            let room = WIDTH.saturating_sub(line.chars().count() + separator);
            if word.len() <= room {
                if !empty {
                    line.push(' ');
                }
                line.extend(word.iter());
                empty = false;
                break;
            }
            if word.len() > longest && (room > 0 || empty) {
                if !empty {
                    line.push(' ');
                }
                line.extend(word.drain(..room.max(1)));
            }
            out.push_str(&line);
            out.push('\n');
            line = rest.to_string();
            empty = true;
            if word.is_empty() {
                break;
            }
        }
    }
    if !empty {
        out.push_str(&line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{GpuReport, ProcessReport, SCHEMA_VERSION, TenantReport, TenantUsage};
    use gpuslice_ledger::GpuUuid;
    use std::time::Instant;

    fn report(tenants: Vec<TenantReport>) -> Report {
        Report {
            version: SCHEMA_VERSION,
            ledger: "/run/gpuslice".into(),
            gets_window_ms: Some(250),
            tenants,
            unenforced: None,
            read_at: Instant::now(),
        }
    }

    fn busy_tenant(name: &str) -> TenantReport {
        TenantReport {
            name: name.into(),
            error: None,
            usage: Some(TenantUsage {
                memory_limit_bytes: Some(4 << 30),
                compute_share_percent: Some(30.0),
                compute_limit_percent: None,
                priority: Some("high"),
                live_processes: 2,
                gpus: vec![GpuReport {
                    uuid: GpuUuid([0xab; 16]).to_string(),
                    memory_used_bytes: 3 << 30,
                    memory_limit_bytes: None,
                    oom_refusals: 12_345,
                    compute_share_percent: Some(12.5),
                    compute_limit_percent: Some(100.0),
                    priority: Some("high"),
                    compute_source: "published",
                    gpu_time_ns: 3_600_000_000_000_000,
                    throttled_ns: 999_999_999,
                    gets_percent: Some(99.9),
                    processes: vec![ProcessReport {
                        slot: 63,
                        pid: 4_194_304,
                        memory_bytes: (1 << 40) - 1,
                        gpu_time_ns: 5,
                    }],
                }],
            }),
        }
    }

    #[test]
    fn table_fits_80_columns_even_at_the_limits() {
        let long_name = "x".repeat(63);
        let text = render_table(&report(vec![
            busy_tenant(&long_name),
            TenantReport {
                name: "broken".into(),
                error: Some(format!(
                    "/very/long/path/{}/usage is not a valid gpuslice usage file: bad magic",
                    "y".repeat(100)
                )),
                usage: None,
            },
        ]));
        for line in text.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{line:?} ({} columns)",
                line.len()
            );
        }
        assert!(
            text.contains(&format!("{long_name} (2 processes)")),
            "{text}"
        );
        assert!(text.contains("unlimited"), "{text}");
        assert!(text.contains("error: /very/long/path"), "{text}");
    }

    #[test]
    fn table_columns_line_up() {
        let text = render_table(&report(vec![busy_tenant("a")]));
        let lines: Vec<&str> = text.lines().collect();
        let header = lines[2];
        let gpu = lines[4];
        // USED ends where the header's USED ends.
        let used_end = header.find("USED").unwrap() + "USED".len();
        assert_eq!(&gpu[used_end - "3 GiB".len()..used_end], "3 GiB", "{text}");
        // The compute line, wrapped at 80 columns.
        assert_eq!(
            lines[5], "    share 12.5%, limit 100%, priority high; gets 99.9%; GPU time 1000.0 h,",
            "{text}"
        );
        assert_eq!(lines[6], "      throttled 999 ms", "{text}");
        let process = lines[7];
        assert!(process.starts_with("    slot 63, pid 4194304"), "{text}");
        assert_eq!(
            &process[used_end - "1023 GiB".len()..used_end],
            "1023 GiB",
            "{text}"
        );
    }

    /// Issue 16, item 6: a compute line wrapped between "0" and "s", leaving "s" alone at
    /// the start of the next line.
    #[test]
    fn a_figure_is_never_split_from_its_unit() {
        // "    " and 74 characters: " 0" would just fit on the line, " 0 s" does not.
        let text = format!("{} 0 s, throttled 250 ms", "x".repeat(74));
        let mut out = String::new();
        wrap(&mut out, &text, "    ", "      ");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], "      0 s, throttled 250 ms", "{out}");
        // In a whole table, with every duration 0 s.
        let mut tenant = busy_tenant(&"y".repeat(20));
        if let Some(usage) = tenant.usage.as_mut() {
            for gpu in &mut usage.gpus {
                gpu.gpu_time_ns = 0;
                gpu.throttled_ns = 0;
            }
        }
        let text = render_table(&report(vec![tenant]));
        for pair in text.lines().collect::<Vec<_>>().windows(2) {
            let next = pair[1].trim_start();
            assert!(
                !UNITS.iter().any(|u| next == *u
                    || next.starts_with(&format!("{u} "))
                    || next.starts_with(&format!("{u},"))),
                "a unit starts a line:\n{text}"
            );
        }
        assert_eq!(
            unbroken_words("GPU time 0 s, throttled 12.3 s"),
            ["GPU", "time", "0 s,", "throttled", "12.3 s"]
        );
        assert_eq!(
            unbroken_words("slot 63, pid 4 s"),
            ["slot", "63,", "pid", "4 s"]
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(format_duration(0), "0 s");
        assert_eq!(format_duration(999_999), "0 ms");
        assert_eq!(format_duration(250_000_000), "250 ms");
        assert_eq!(format_duration(12_340_000_000), "12.3 s");
        assert_eq!(format_duration(9_000_000_000_000), "2.5 h");
        assert_eq!(percent_text(Some(30.0)), "30%");
        assert_eq!(percent_text(Some(12.5)), "12.5%");
        assert_eq!(percent_text(None), "-");
    }

    #[test]
    fn json_has_the_documented_shape() {
        let value = serde_json::to_value(report(vec![
            busy_tenant("a"),
            TenantReport {
                name: "b".into(),
                error: Some("bad".into()),
                usage: None,
            },
        ]))
        .unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["ledger"], "/run/gpuslice");
        let a = &value["tenants"][0];
        assert_eq!(a["name"], "a");
        assert_eq!(a["memory_limit_bytes"], 4u64 << 30);
        assert_eq!(a["live_processes"], 2);
        assert!(a.get("error").is_none());
        let gpu = &a["gpus"][0];
        assert_eq!(gpu["memory_used_bytes"], 3u64 << 30);
        assert!(gpu["memory_limit_bytes"].is_null());
        assert_eq!(gpu["oom_refusals"], 12_345);
        assert_eq!(gpu["processes"][0]["slot"], 63);
        assert_eq!(gpu["processes"][0]["pid"], 4_194_304);
        assert_eq!(gpu["processes"][0]["memory_bytes"], (1u64 << 40) - 1);
        assert_eq!(gpu["processes"][0]["gpu_time_ns"], 5);
        assert_eq!(value["gets_window_ms"], 250);
        assert_eq!(a["compute_share_percent"], 30.0);
        assert!(a["compute_limit_percent"].is_null());
        assert_eq!(a["priority"], "high");
        assert_eq!(gpu["compute_share_percent"], 12.5);
        assert_eq!(gpu["compute_limit_percent"], 100.0);
        assert_eq!(gpu["priority"], "high");
        assert_eq!(gpu["compute_source"], "published");
        assert_eq!(gpu["gpu_time_ns"], 3_600_000_000_000_000u64);
        assert_eq!(gpu["throttled_ns"], 999_999_999);
        assert_eq!(gpu["gets_percent"], 99.9);
        let b = &value["tenants"][1];
        assert_eq!(b["error"], "bad");
        assert!(b.get("gpus").is_none());
    }
}
