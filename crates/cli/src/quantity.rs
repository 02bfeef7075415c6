//! Byte quantities as Kubernetes writes them (`4Gi`, `512Mi`, `8G`, `1.5Gi`, `1073741824`):
//! parsing `--memory`, and printing sizes back for messages and tables.
//!
//! The parser is the ledger crate's, the same one the shim uses for
//! `GPUSLICE_MEMORY_LIMIT`, so both accept exactly the same forms.

pub use gpuslice_ledger::{QUANTITY_FORM, parse_quantity};

/// The `--memory` value parser: bytes, or a message saying what is accepted.
pub fn parse_memory_arg(text: &str) -> Result<u64, String> {
    parse_quantity(text).ok_or_else(|| format!("expected {QUANTITY_FORM}"))
}

/// Binary suffixes, largest first.
const BINARY: [(&str, u32); 6] = [
    ("Ei", 60),
    ("Pi", 50),
    ("Ti", 40),
    ("Gi", 30),
    ("Mi", 20),
    ("Ki", 10),
];

/// `bytes` exactly, in the shortest quantity form that `--memory` accepts back: with a
/// binary suffix (`4Gi`) or a decimal one (`8G`) when one divides it, the binary one when
/// both are as short, else plain bytes.
pub fn format_quantity(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    let binary = BINARY
        .iter()
        .find(|(_, shift)| bytes.trailing_zeros() >= *shift)
        .map(|(suffix, shift)| format!("{}{suffix}", bytes >> shift));
    let decimal = [
        ("E", 18),
        ("P", 15),
        ("T", 12),
        ("G", 9),
        ("M", 6),
        ("k", 3),
    ]
    .iter()
    .find(|(_, exp)| bytes.is_multiple_of(10u64.pow(*exp)))
    .map(|(suffix, exp)| format!("{}{suffix}", bytes / 10u64.pow(*exp)));
    [binary, decimal]
        .into_iter()
        .flatten()
        .fold(bytes.to_string(), |best, form| {
            if form.len() < best.len() { form } else { best }
        })
}

/// `bytes` for a table column, at most 10 characters: `0 B`, `512 B`, `320 MiB`, `1.5 GiB`
/// (one decimal, rounded down, below 100 of a unit; whole units above).
pub fn format_size(bytes: u64) -> String {
    let Some((suffix, shift)) = BINARY
        .iter()
        .rev()
        .take_while(|(_, shift)| bytes >> shift > 0)
        .last()
        .copied()
    else {
        return format!("{bytes} B");
    };
    let whole = bytes >> shift;
    let tenths = ((u128::from(bytes) * 10) >> shift) % 10;
    if whole >= 100 || bytes.trailing_zeros() >= shift {
        format!("{whole} {suffix}B")
    } else {
        format!("{whole}.{tenths} {suffix}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_arg_errors_say_what_is_accepted() {
        // The parser itself is tested where it lives, in crates/ledger.
        assert_eq!(parse_memory_arg("4Gi"), Ok(4 << 30));
        assert!(parse_memory_arg("4GB").unwrap_err().contains("4Gi"));
    }

    #[test]
    fn formatted_quantities_are_exact_and_parse_back() {
        for (bytes, text) in [
            (0, "0"),
            (4 << 30, "4Gi"),
            (3 << 29, "1536Mi"),
            (8_000_000_000, "8G"),
            (1000, "1k"),
            (1024, "1Ki"),
            (1001, "1001"),
            (u64::MAX, "18446744073709551615"),
        ] {
            assert_eq!(format_quantity(bytes), text);
            assert_eq!(parse_quantity(text), Some(bytes));
        }
    }

    #[test]
    fn sizes_fit_a_table_column() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1 KiB");
        assert_eq!(format_size(320 << 20), "320 MiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size((1 << 30) - 1), "1023 MiB");
        assert_eq!(format_size((10 << 30) + (1 << 20)), "10.0 GiB");
        for bytes in [u64::MAX, (1000 << 30) - 1, 99_999_999] {
            assert!(format_size(bytes).len() <= 10, "{}", format_size(bytes));
        }
    }
}
