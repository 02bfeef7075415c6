//! The terminal and the keys: `gpuslice top`'s loop, which draws the [`View`], waits for a
//! key or the next refresh, and reads the ledger again.

use std::io::{self, IsTerminal};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute, terminal};

use super::view::{View, render};
use crate::cli::TopArgs;
use crate::exit::{self, Failure, ResultExt};
use crate::locate;
use crate::report::{Report, read_report};

/// Runs `gpuslice top` until the user quits.
pub fn top(args: TopArgs) -> Result<u8, Failure> {
    if !io::stdout().is_terminal() {
        return Err(anyhow!(
            "gpuslice top needs a terminal on stdout; use `gpuslice status` (or `gpuslice \
             status --json`) to print the same figures to a pipe or a file"
        ))
        .usage();
    }
    let dir = locate::ledger_dir(args.dir.as_deref()).usage()?;
    // A ledger that cannot be read at all is a usage error, as for status, before the
    // screen is taken over.
    let report = read_report(&dir).usage()?;
    let interval = Duration::from_millis(args.interval);
    let guard = TerminalGuard::enter()
        .map_err(|e| anyhow!("could not set up the terminal: {e}"))
        .failed()?;
    let result = event_loop(&dir, report, interval)
        .map_err(|e| anyhow!("terminal error: {e}"))
        .failed();
    drop(guard);
    result.map(|()| exit::OK)
}

/// Draws, waits for a key or the next refresh, reads the ledger again; until `q`, Esc or
/// Ctrl-C.
fn event_loop(dir: &Path, mut report: Report, interval: Duration) -> io::Result<()> {
    let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    let mut refreshed = clock_now();
    let mut error: Option<String> = None;
    let mut scroll = 0usize;
    let mut next_read = Instant::now() + interval;
    loop {
        let mut max_scroll = 0;
        terminal.draw(|frame| {
            let view = View {
                report: &report,
                refreshed: &refreshed,
                interval,
                error: error.as_deref(),
                scroll,
            };
            max_scroll = render(frame, frame.area(), &view);
        })?;
        scroll = scroll.min(max_scroll);
        // Anything but a key (a resize) only needs the redraw at the top of the loop.
        if event::poll(next_read.saturating_duration_since(Instant::now()))?
            && let Event::Key(key) = event::read()?
            && key.kind != KeyEventKind::Release
        {
            let control = key.modifiers.contains(KeyModifiers::CONTROL);
            match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('c') if control => return Ok(()),
                KeyCode::Down | KeyCode::Char('j') => scroll = scroll.saturating_add(1),
                KeyCode::Up | KeyCode::Char('k') => scroll = scroll.saturating_sub(1),
                KeyCode::PageDown | KeyCode::Char(' ') => scroll = scroll.saturating_add(10),
                KeyCode::PageUp => scroll = scroll.saturating_sub(10),
                KeyCode::Home => scroll = 0,
                _ => {}
            }
        }
        if Instant::now() >= next_read {
            match read_report(dir) {
                Ok(mut fresh) => {
                    crate::report::measure_gets(&report, &mut fresh);
                    report = fresh;
                    refreshed = clock_now();
                    error = None;
                }
                // The ledger went away or became unreadable: keep the last figures, say so.
                Err(e) => error = Some(crate::message(&e)),
            }
            next_read = Instant::now() + interval;
        }
    }
}

/// Raw mode and the alternate screen, for as long as it lives: dropping it (also while a
/// panic unwinds) gives the terminal back. A panic hook gives it back before the panic
/// message is printed, so that the message lands on the normal screen.
#[derive(Debug)]
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> io::Result<TerminalGuard> {
        terminal::enable_raw_mode()?;
        // From here on, dropping the guard undoes whatever part of the setup happened.
        let guard = TerminalGuard;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Leaves raw mode and the alternate screen; harmless when done twice.
fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

/// The local wall-clock time, `HH:MM:SS`.
fn clock_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let time = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: `libc::tm` is plain integers and a pointer, for which all zeroes is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads `time` and writes only `tm`, both valid for the call.
    let local = unsafe { libc::localtime_r(&time, &mut tm) };
    if local.is_null() {
        let day = secs % 86_400;
        return format!("{:02}:{:02}:{:02} UTC", day / 3600, day / 60 % 60, day % 60);
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}
