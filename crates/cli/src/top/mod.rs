//! `gpuslice top`: a live terminal view of the ledger, per GPU: every tenant's memory against
//! its quota, its refusals, its compute share, limit and priority, the share of the GPU it
//! gets and how long it was throttled, and its processes, read again a few times a second.
//!
//! The data is exactly what `gpuslice status` reads ([`crate::report::read_report`]), regrouped by
//! GPU (`model`). `view::render` draws it into any ratatui frame, so tests draw it on a
//! `TestBackend`; `input` is the event loop around it on the real terminal, which a
//! guard gives back as it found it however the loop ends (`q`, an error, a panic).
//!
//! The table is a list of `view::Column`s chosen by the terminal's width: a column is a header,
//! a width and a cell. What a tenant gets (GETS) is measured between two reads of the ledger
//! ([`crate::report::measure_gets`]): the GPU time it was charged over the wall time in between.
//!
//! ```text
//! model   the report as the screen's lines: GPUs, their tenants' figures, damaged tenants
//! view    the lines drawn as a table whose columns fit the width; scrolling; the header
//! input   the terminal, the keys, and the refresh loop
//! ```

mod input;
mod model;
mod view;

pub use input::top;
