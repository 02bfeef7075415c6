//! Property-based tests of the parsers that read settings from outside (the shim's
//! `GPUSLICE_MEMORY_LIMIT`, `GPUSLICE_COMPUTE_SHARE` / `_LIMIT`, `GPUSLICE_PRIORITY`, and the
//! command's flags, which use the same functions): no input makes them panic, and what they
//! accept means what it says.

use gpuslice_ledger::{Priority, parse_percent, parse_priority, parse_quantity};
use proptest::prelude::*;

/// The suffixes of a Kubernetes byte quantity and what each multiplies by.
const SUFFIXES: [(&str, u128); 13] = [
    ("", 1),
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
];

proptest! {
    #[test]
    fn quantity_parsing_never_panics(text in any::<String>()) {
        let _ = parse_quantity(&text);
    }

    #[test]
    fn quantity_parsing_never_panics_on_near_misses(text in "[0-9.eE+KMGTPEikm-]{0,24}") {
        let _ = parse_quantity(&text);
    }

    #[test]
    fn plain_bytes_round_trip(bytes in any::<u64>()) {
        prop_assert_eq!(parse_quantity(&bytes.to_string()), Some(bytes));
    }

    #[test]
    fn a_whole_number_with_a_suffix_is_that_many_units_or_refused(
        number in any::<u64>(),
        suffix in 0..SUFFIXES.len(),
    ) {
        let (text, unit) = SUFFIXES[suffix];
        let exact = u128::from(number) * unit;
        let parsed = parse_quantity(&format!("{number}{text}"));
        match u64::try_from(exact) {
            Ok(bytes) => prop_assert_eq!(parsed, Some(bytes)),
            Err(_) => prop_assert_eq!(parsed, None, "overflow must be refused"),
        }
    }

    #[test]
    fn a_fraction_rounds_up_to_whole_bytes(
        whole in 0u64..1_000_000,
        tenths in 0u64..10,
        suffix in 0..SUFFIXES.len(),
    ) {
        let (text, unit) = SUFFIXES[suffix];
        let tenths_of_bytes = (u128::from(whole) * 10 + u128::from(tenths)) * unit;
        let parsed = parse_quantity(&format!("{whole}.{tenths}{text}"));
        match u64::try_from(tenths_of_bytes.div_ceil(10)) {
            Ok(bytes) => prop_assert_eq!(parsed, Some(bytes)),
            Err(_) => prop_assert_eq!(parsed, None),
        }
    }

    #[test]
    fn a_negative_or_blank_padded_quantity_is_refused(bytes in any::<u64>()) {
        prop_assert_eq!(parse_quantity(&format!("-{bytes}")), None);
        prop_assert_eq!(parse_quantity(&format!(" {bytes}")), None);
        prop_assert_eq!(parse_quantity(&format!("{bytes} ")), None);
    }

    #[test]
    fn percent_parsing_never_panics(text in any::<String>()) {
        let _ = parse_percent(&text);
    }

    #[test]
    fn every_percent_with_one_decimal_round_trips(permille in 1u32..=1000) {
        let text = format!("{}.{}", permille / 10, permille % 10);
        prop_assert_eq!(parse_percent(&text), Some(permille));
        prop_assert_eq!(parse_percent(&format!("{text}%")), Some(permille));
        if permille % 10 == 0 {
            prop_assert_eq!(parse_percent(&(permille / 10).to_string()), Some(permille));
        }
    }

    #[test]
    fn an_accepted_percent_is_always_in_range(text in "[ 0-9.%]{0,8}") {
        if let Some(permille) = parse_percent(&text) {
            prop_assert!((1..=1000).contains(&permille), "{text:?} -> {permille}");
        }
    }

    #[test]
    fn priority_parsing_never_panics_and_accepts_only_the_three_names(text in any::<String>()) {
        let expected = match text.trim().to_ascii_lowercase().as_str() {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        };
        prop_assert_eq!(parse_priority(&text), expected);
    }
}
