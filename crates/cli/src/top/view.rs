//! The screen: the [`model`](super::model)'s lines drawn as a table whose [`Column`]s fit
//! the terminal's width, under a header, scrolled.

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{LineGauge, Paragraph};

use super::model::{Item, Row, items};
use crate::quantity::format_size;
use crate::report::Report;
use crate::status::{format_duration, percent_text};

/// Below this many columns the view is narrow: no gauge bars, abbreviated UUIDs, short
/// figures.
const NARROW: u16 = 60;
/// From this many columns on, the PIDs of each tenant's processes are shown too.
const WIDE: u16 = 100;

/// What one screen shows.
#[derive(Debug)]
pub struct View<'a> {
    /// The ledger as last read.
    pub report: &'a Report,
    /// When it was read (`12:34:56`).
    pub refreshed: &'a str,
    /// How often it is read.
    pub interval: Duration,
    /// Why the latest read failed, if it did (`report` is then the one before).
    pub error: Option<&'a str>,
    /// How many lines of the body are scrolled out at the top.
    pub scroll: usize,
}

/// A column of the table. Adding one is a variant here, its header, its cell and its width,
/// and a place in [`Column::for_width`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Tenant,
    Memory,
    Percent,
    Bar,
    Share,
    Limit,
    Priority,
    Gets,
    Throttled,
    Oom,
    Processes,
    Pids,
}

impl Column {
    /// The columns that fit `width`.
    fn for_width(width: u16) -> &'static [Column] {
        use Column::*;
        if width < NARROW {
            &[Tenant, Memory, Percent, Gets, Oom, Processes]
        } else if width < WIDE {
            &[Tenant, Memory, Percent, Bar, Share, Gets, Oom, Processes]
        } else {
            &[
                Tenant, Memory, Percent, Bar, Share, Limit, Priority, Gets, Throttled, Oom,
                Processes, Pids,
            ]
        }
    }

    fn header(self, narrow: bool) -> &'static str {
        match self {
            Column::Tenant => "TENANT",
            Column::Memory if narrow => "USED/LIMIT",
            Column::Memory => "USED / LIMIT",
            Column::Percent => "USE%",
            Column::Bar => "",
            Column::Share => "SHARE",
            Column::Limit => "LIMIT",
            Column::Priority => "PRIO",
            Column::Gets => "GETS",
            Column::Throttled => "THROTTLED",
            Column::Oom => "OOM",
            Column::Processes if narrow => "PRC",
            Column::Processes => "PROCS",
            Column::Pids => "PIDS",
        }
    }

    /// The cell's text (the bar is drawn, not written).
    fn text(self, row: &Row<'_>, narrow: bool) -> String {
        match self {
            Column::Tenant => row.tenant.to_string(),
            Column::Memory if narrow => {
                let short = |bytes: u64| format_size(bytes).replace(' ', "");
                format!(
                    "{}/{}",
                    short(row.used),
                    row.limit.map_or("∞".into(), short)
                )
            }
            Column::Memory => format!(
                "{} / {}",
                format_size(row.used),
                row.limit.map_or("unlimited".into(), format_size)
            ),
            Column::Percent => percent(row).map_or("-".into(), |p| format!("{p}%")),
            Column::Bar => String::new(),
            Column::Share => percent_text(row.share),
            Column::Limit => percent_text(row.compute_limit),
            Column::Priority => row.priority.unwrap_or("normal").to_string(),
            // Whole percents where room is short.
            Column::Gets if narrow => percent_text(row.gets.map(f64::round)),
            Column::Gets => percent_text(row.gets),
            Column::Throttled => row.throttled_ns.map_or("-".into(), format_duration),
            Column::Oom => row.oom.to_string(),
            Column::Processes => row.processes.to_string(),
            Column::Pids => row
                .pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    fn right_aligned(self) -> bool {
        matches!(
            self,
            Column::Memory
                | Column::Percent
                | Column::Share
                | Column::Limit
                | Column::Gets
                | Column::Throttled
                | Column::Oom
                | Column::Processes
        )
    }

    /// The column's width, given the widest of its header and cells.
    fn constraint(self, widest: u16, narrow: bool) -> Constraint {
        match self {
            // What is left in a narrow view; in a wide one, names longer than 24 are cut.
            Column::Tenant if narrow => Constraint::Fill(1),
            Column::Tenant => Constraint::Length(widest.min(24)),
            Column::Bar => Constraint::Fill(1),
            Column::Pids => Constraint::Length(widest.min(24)),
            _ => Constraint::Length(widest),
        }
    }
}

/// Used as a whole percentage of the limit; `None` when unlimited.
fn percent(row: &Row<'_>) -> Option<u64> {
    let limit = row.limit?;
    if limit == 0 {
        return Some(if row.used == 0 { 0 } else { 100 });
    }
    let p = u128::from(row.used) * 100 / u128::from(limit);
    Some(u64::try_from(p).unwrap_or(u64::MAX))
}

/// The colour of a tenant's use of its quota.
fn pressure_style(row: &Row<'_>) -> Style {
    match percent(row) {
        None => Style::default(),
        Some(p) if p >= 90 => Style::default().fg(Color::Red),
        Some(p) if p >= 75 => Style::default().fg(Color::Yellow),
        Some(_) => Style::default().fg(Color::Green),
    }
}

/// `GPU-5f8c3a12…` for a narrow view.
fn short_uuid(uuid: &str) -> String {
    let kept: String = uuid.chars().take("GPU-".len() + 8).collect();
    if kept.len() < uuid.len() {
        format!("{kept}…")
    } else {
        kept
    }
}

/// Draws `view` into `area` of `frame`; returns the largest useful [`View::scroll`]. Never
/// panics, whatever the size of `area` (ratatui clips what does not fit).
pub fn render(frame: &mut Frame<'_>, area: Rect, view: &View<'_>) -> usize {
    if area.is_empty() {
        return 0;
    }
    let narrow = area.width < NARROW;
    let mut y = area.y;
    let bottom = area.bottom();
    // One line of text at `y`, if there is room left.
    let line = |frame: &mut Frame<'_>, y: &mut u16, content: Line<'_>| {
        if *y < bottom {
            frame.render_widget(
                Paragraph::new(content),
                Rect::new(area.x, *y, area.width, 1),
            );
            *y += 1;
        }
    };

    let tenants = view.report.tenants.len();
    // A narrow view leaves the title out, for room.
    let title = if narrow { "" } else { "gpuslice top  " };
    let mut header = vec![
        Span::styled(title, Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "{tenants} tenant{}  {}",
            if tenants == 1 { "" } else { "s" },
            view.refreshed
        )),
    ];
    if !narrow {
        header.push(Span::raw(format!(
            " (every {} ms)",
            view.interval.as_millis()
        )));
    }
    header.push(Span::raw(format!("  ledger {}", view.report.ledger)));
    if !narrow {
        header.push(Span::styled(
            "  q quits",
            Style::default().fg(Color::DarkGray),
        ));
    }
    line(frame, &mut y, Line::from(header));
    if let Some(error) = view.error {
        line(
            frame,
            &mut y,
            Line::styled(
                format!("refresh failed: {error}"),
                Style::default().fg(Color::Red),
            ),
        );
    }

    let items = items(view.report, area.width);
    let columns = Column::for_width(area.width);
    let widest: Vec<u16> = columns
        .iter()
        .map(|c| {
            let cells = items.iter().filter_map(|item| match item {
                Item::Tenant(row) => Some(c.text(row, narrow)),
                _ => None,
            });
            cells
                .map(|text| text.chars().count())
                .chain([c.header(narrow).len()])
                .max()
                .map_or(0, |w| u16::try_from(w).unwrap_or(u16::MAX))
        })
        .collect();
    let layout = Layout::horizontal(
        columns
            .iter()
            .zip(&widest)
            .map(|(c, w)| c.constraint(*w, narrow)),
    )
    .spacing(1);
    // Rows are indented under their GPU.
    let cells = |y: u16| {
        let row = Rect::new(area.x, y, area.width, 1).intersection(area);
        let indented = Rect {
            x: row.x.saturating_add(2).min(row.right()),
            width: row.width.saturating_sub(2),
            ..row
        };
        layout.split(indented)
    };

    if y < bottom {
        let rects = cells(y);
        for (column, rect) in columns.iter().zip(rects.iter()) {
            let text = Paragraph::new(column.header(narrow))
                .style(Style::default().add_modifier(Modifier::BOLD));
            let text = if column.right_aligned() {
                text.right_aligned()
            } else {
                text
            };
            frame.render_widget(text, *rect);
        }
        y += 1;
    }

    let room = usize::from(bottom.saturating_sub(y));
    let max_scroll = items.len().saturating_sub(room);
    let scroll = view.scroll.min(max_scroll);
    let hidden_below = items.len().saturating_sub(scroll + room);
    // When some lines do not fit, the last line says how many.
    let shown = if hidden_below > 0 {
        room.saturating_sub(1)
    } else {
        room
    };
    for item in items.iter().skip(scroll).take(shown) {
        match item {
            Item::Gpu { uuid, tenants } => {
                let uuid = if narrow {
                    short_uuid(uuid)
                } else {
                    (*uuid).to_string()
                };
                line(
                    frame,
                    &mut y,
                    Line::from(vec![
                        Span::styled(uuid, Style::default().add_modifier(Modifier::BOLD)),
                        Span::styled(
                            format!("  {tenants} tenant{}", if *tenants == 1 { "" } else { "s" }),
                            Style::default().fg(Color::DarkGray),
                        ),
                    ]),
                );
            }
            Item::Heading(text) => line(
                frame,
                &mut y,
                Line::styled(*text, Style::default().add_modifier(Modifier::BOLD)),
            ),
            Item::Note(text) => line(frame, &mut y, Line::raw(format!("  {text}"))),
            Item::Damaged { name, error } => {
                let indent = if name.is_empty() { "    " } else { "  " };
                line(
                    frame,
                    &mut y,
                    Line::styled(format!("{indent}{error}"), Style::default().fg(Color::Red)),
                );
            }
            Item::Tenant(row) => {
                let rects = cells(y);
                for (column, rect) in columns.iter().zip(rects.iter()) {
                    if rect.is_empty() {
                        continue;
                    }
                    if *column == Column::Bar {
                        if let Some(p) = percent(row) {
                            let ratio = (p.min(100) as f64) / 100.0;
                            frame.render_widget(
                                LineGauge::default()
                                    .ratio(ratio)
                                    .label("")
                                    .filled_symbol("█")
                                    .unfilled_symbol("░")
                                    .filled_style(pressure_style(row))
                                    .unfilled_style(Style::default().fg(Color::DarkGray)),
                                *rect,
                            );
                        }
                        continue;
                    }
                    let mut text = column.text(row, narrow);
                    let width = usize::from(rect.width);
                    if *column == Column::Tenant && text.chars().count() > width {
                        text = text.chars().take(width.saturating_sub(1)).collect();
                        text.push('…');
                    }
                    let style = if *column == Column::Percent {
                        pressure_style(row)
                    } else if *column == Column::Oom && row.oom > 0 {
                        Style::default().fg(Color::Red)
                    } else {
                        Style::default()
                    };
                    let cell = Paragraph::new(text).style(style);
                    let cell = if column.right_aligned() {
                        cell.right_aligned()
                    } else {
                        cell
                    };
                    frame.render_widget(cell, *rect);
                }
                y += 1;
            }
        }
    }
    if hidden_below > 0 {
        line(
            frame,
            &mut y,
            Line::styled(
                format!("… {hidden_below} more lines (↓ / PgDn scroll)"),
                Style::default().fg(Color::DarkGray),
            ),
        );
    }
    max_scroll
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::read_report;
    use gpuslice_ledger::{
        ComputeSettings, GpuUuid, Ledger, Limits, Priority, TenantName, TenantQuota,
    };
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const GPU_A: &str = "GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d";
    const GPU_B: &str = "GPU-9d0e1f22-1111-4222-8333-444455556666";

    fn name(text: &str) -> TenantName {
        TenantName::new(text).unwrap()
    }

    fn quota(limit: Option<u64>) -> TenantQuota {
        TenantQuota {
            defaults: Limits {
                memory_bytes: limit,
                ..Limits::default()
            },
            per_gpu: vec![],
        }
    }

    /// The screen as text, one `\n`-terminated line per row.
    fn draw(report: &Report, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal
            .draw(|frame| {
                let view = View {
                    report,
                    refreshed: "12:34:56",
                    interval: Duration::from_millis(250),
                    error: None,
                    scroll: 0,
                };
                render(frame, frame.area(), &view);
            })
            .unwrap();
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for row in buffer.content().chunks(usize::from(width.max(1))) {
            for cell in row {
                text.push_str(cell.symbol());
            }
            text.push('\n');
        }
        text
    }

    /// The line of `screen` that holds `needle`.
    fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
        screen
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{screen}"))
    }

    /// A ledger with four tenants, read as `status` reads it. The slots (live processes)
    /// live as long as the returned guard.
    fn busy_ledger() -> (tempfile::TempDir, Report, Vec<impl Sized>) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let (gpu_a, gpu_b) = (
            GpuUuid::parse(GPU_A).unwrap(),
            GpuUuid::parse(GPU_B).unwrap(),
        );
        let mut held = Vec::new();

        // A quota that gives team-a what its process then publishes (a process never
        // publishes more than its quota gives; observers cap what it says by the quota).
        let compute = ComputeSettings {
            share_permille: Some(300),
            limit_permille: Some(125),
            priority: Some(Priority::High),
        };
        let mut team_a = quota(Some(GIB));
        team_a.defaults.compute_share_permille = compute.share_permille;
        team_a.defaults.compute_limit_permille = compute.limit_permille;
        team_a.defaults.priority = compute.priority;
        ledger.write_quota(&name("team-a"), &team_a).unwrap();
        let usage = ledger.open_usage(&name("team-a")).unwrap();
        let a = usage.register_gpu(&gpu_a).unwrap();
        let slot = usage.claim_slot().unwrap();
        slot.try_reserve(a, 300 * MIB, GIB).unwrap();
        usage.record_oom(a);
        slot.publish_compute(a, compute);
        usage.add_throttled(a, 1_500_000_000);
        let before = read_report(dir.path()).unwrap();
        // 100 ms of GPU time in 400 ms of wall time: 25%.
        slot.add_gpu_time(a, 100_000_000);
        held.push(slot);

        ledger
            .write_quota(&name("team-b"), &quota(Some(2 * GIB)))
            .unwrap();
        let usage = ledger.open_usage(&name("team-b")).unwrap();
        let a = usage.register_gpu(&gpu_a).unwrap();
        let b = usage.register_gpu(&gpu_b).unwrap();
        let first = usage.claim_slot().unwrap();
        first.try_reserve(a, GIB, 2 * GIB).unwrap();
        let second = usage.claim_slot().unwrap();
        second.try_reserve(a, 900 * MIB, 2 * GIB).unwrap();
        second.try_reserve(b, 100 * MIB, 2 * GIB).unwrap();
        held.extend([first, second]);

        // No quota file: unlimited.
        let usage = ledger.open_usage(&name("team-c")).unwrap();
        let b = usage.register_gpu(&gpu_b).unwrap();
        let slot = usage.claim_slot().unwrap();
        slot.try_reserve(b, 64 * MIB, u64::MAX).unwrap();
        held.push(slot);

        ledger
            .write_quota(&name("idle"), &quota(Some(4 * GIB)))
            .unwrap();

        let mut report = read_report(dir.path()).unwrap();
        report.read_at = before.read_at + Duration::from_millis(400);
        crate::report::measure_gets(&before, &mut report);
        (dir, report, held)
    }

    #[test]
    fn wide_view_shows_every_tenant_per_gpu_with_used_limit_percent_and_bar() {
        let (dir, report, _held) = busy_ledger();
        let screen = draw(&report, 100, 30);
        eprintln!("{screen}");
        let header = screen.lines().next().unwrap();
        assert!(header.contains("4 tenants"), "{header}");
        assert!(header.contains("12:34:56"), "{header}");
        assert!(
            header.contains(&dir.path().display().to_string()),
            "{header}"
        );

        // GPU A: team-a then team-b; GPU B: team-b then team-c.
        let lines: Vec<&str> = screen.lines().collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?}:\n{screen}"))
        };
        assert!(
            at(GPU_A) < at("team-a") && at("team-a") < at(GPU_B),
            "{screen}"
        );
        assert!(line_with(&screen, GPU_A).contains("2 tenants"), "{screen}");

        let a = line_with(&screen, "team-a");
        for figure in [
            "300 MiB / 1 GiB",
            "29%",
            "█",
            "░",
            " 1 ",
            " 30% ",
            " 12.5% ",
            " high ",
            " 25% ",
            " 1.5 s ",
        ] {
            assert!(a.contains(figure), "{figure:?} in {a:?}");
        }
        let head = line_with(&screen, "THROTTLED");
        for column in ["SHARE", "LIMIT", "PRIO", "GETS"] {
            assert!(head.contains(column), "{column} in {head:?}");
        }
        // GETS lines up under its header; a tenant not in both readings has none.
        // (In characters: the bars are several bytes each.)
        let gets_end = head[..head.find("GETS").unwrap()].chars().count() + "GETS".len();
        let upto = |line: &str| line.chars().take(gets_end).collect::<String>();
        assert!(upto(a).ends_with("25%"), "{screen}");
        assert!(
            upto(line_with(&screen, "team-c")).ends_with(" -"),
            "{screen}"
        );
        assert!(a.contains(&std::process::id().to_string()), "PIDs: {a:?}");
        let b_on_a = lines[at(GPU_A)..at(GPU_B)]
            .iter()
            .find(|l| l.contains("team-b"))
            .unwrap();
        assert!(b_on_a.contains("1.8 GiB / 2 GiB"), "{b_on_a:?}");
        assert!(b_on_a.contains("93%"), "{b_on_a:?}");
        let b_on_b = lines[at(GPU_B)..]
            .iter()
            .find(|l| l.contains("team-b"))
            .unwrap();
        assert!(b_on_b.contains("100 MiB / 2 GiB"), "{b_on_b:?}");
        assert!(b_on_b.contains("4%"), "{b_on_b:?}");
        let c = line_with(&screen, "team-c");
        assert!(c.contains("64 MiB / unlimited"), "{c:?}");
        assert!(
            !c.contains('█') && !c.contains('░'),
            "no bar when unlimited: {c:?}"
        );

        assert!(at("no GPU used yet") < at("idle"), "{screen}");
        assert!(
            line_with(&screen, "idle").contains("0 B / 4 GiB"),
            "{screen}"
        );
        // The columns line up under their headers.
        let head = line_with(&screen, "USED / LIMIT");
        let end = head.find("USED / LIMIT").unwrap() + "USED / LIMIT".len();
        assert!(a[..end].ends_with("1 GiB"), "{screen}");
    }

    #[test]
    fn narrow_view_abbreviates_uuids_and_drops_the_bars() {
        let (_dir, report, _held) = busy_ledger();
        let screen = draw(&report, 40, 10);
        eprintln!("{screen}");
        assert!(screen.contains("GPU-5f8c3a12…"), "{screen}");
        assert!(!screen.contains(GPU_A), "{screen}");
        assert!(!screen.contains('█') && !screen.contains('░'), "{screen}");
        let a = line_with(&screen, "team-a");
        assert!(a.contains("300MiB/1GiB"), "{a:?}");
        assert!(a.contains("29%"), "{a:?}");
        assert!(line_with(&screen, "GETS").contains("USE%"), "{screen}");
        assert!(a.contains(" 25% "), "what it gets: {a:?}");
        for line in screen.lines() {
            assert_eq!(line.chars().count(), 40, "{line:?}");
        }
        // 6 lines cannot hold them all: the last says how many are left out.
        let short = draw(&report, 40, 6);
        assert!(
            short.lines().last().unwrap().contains("4 more lines"),
            "{short}"
        );
    }

    #[test]
    fn medium_view_shows_share_and_gets_but_not_limit_or_priority() {
        let (_dir, report, _held) = busy_ledger();
        let screen = draw(&report, 80, 20);
        eprintln!("{screen}");
        let head = line_with(&screen, "SHARE");
        assert!(head.contains("GETS") && !head.contains("PRIO"), "{head:?}");
        let a = line_with(&screen, "team-a");
        assert!(a.contains(" 30% ") && a.contains(" 25% "), "{a:?}");
        assert!(!a.contains("high"), "{a:?}");
        let idle = line_with(&screen, "idle");
        assert!(idle.contains(" - "), "no share, nothing measured: {idle:?}");
        for line in screen.lines() {
            assert_eq!(line.chars().count(), 80, "{line:?}");
        }
    }

    #[test]
    fn tiny_and_odd_sizes_never_panic() {
        let (_dir, report, _held) = busy_ledger();
        for (width, height) in [
            (10, 3),
            (1, 1),
            (2, 30),
            (59, 2),
            (60, 3),
            (100, 1),
            (200, 4),
        ] {
            draw(&report, width, height);
        }
        let screen = draw(&report, 10, 3);
        assert_eq!(screen.lines().count(), 3);
    }

    #[test]
    fn a_damaged_tenant_shows_its_error_and_the_rest_is_shown() {
        let (dir, _report, _held) = busy_ledger();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .write_quota(&name("broken"), &quota(Some(GIB)))
            .unwrap();
        std::fs::write(ledger.quota_path(&name("broken")), b"not a quota file").unwrap();
        let report = read_report(dir.path()).unwrap();
        let screen = draw(&report, 100, 30);
        eprintln!("{screen}");
        assert!(screen.contains("5 tenants"), "{screen}");
        assert!(screen.contains("unreadable"), "{screen}");
        let broken = line_with(&screen, "broken  error: ");
        assert!(broken.contains(dir.path().to_str().unwrap()), "{broken:?}");
        assert!(screen.contains("team-a"), "{screen}");
    }

    #[test]
    fn an_empty_ledger_says_so() {
        let dir = tempfile::tempdir().unwrap();
        Ledger::open(dir.path()).unwrap();
        let report = read_report(dir.path()).unwrap();
        let screen = draw(&report, 80, 6);
        assert!(screen.contains("0 tenants"), "{screen}");
        assert!(screen.contains("(no tenants)"), "{screen}");
    }

    #[test]
    fn uuids_are_cut_after_eight_hex_digits() {
        assert_eq!(short_uuid(GPU_A), "GPU-5f8c3a12…");
        assert_eq!(short_uuid("GPU-12"), "GPU-12");
    }
}
