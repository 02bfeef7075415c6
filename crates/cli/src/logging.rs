//! The log of the commands that run as daemons (`device-plugin`): to stderr, as text with
//! colours only on a terminal, or as JSON lines (`--log-format json`) for a log collector.
//! Colours in a file or a collector are escape codes in every line, so they are off unless
//! stderr is a terminal, and off there too when `NO_COLOR` is set (no-color.org).

use std::ffi::OsStr;
use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `2025-01-01T00:00:00.000000Z  INFO message`, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the event's fields.
    Json,
}

/// Starts logging to stderr at `level` and above, in `format`.
pub fn init(level: tracing::Level, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(colours(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Whether text logs are coloured: on a terminal, unless `NO_COLOR` is set to anything but
/// the empty string.
fn colours(terminal: bool, no_color: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some(OsStr::new(""))));
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None));
    }
}
