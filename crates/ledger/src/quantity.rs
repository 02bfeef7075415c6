//! Byte quantities, the one grammar every part of gpuslice reads them by: the shim's
//! `GPUSLICE_MEMORY_LIMIT`, the command's `--memory`, the simulated GPU's capacities and
//! footprints (`FAKECUDA_*`) and the example programs' sizes.
//!
//! The grammar is Kubernetes' (`resource.Quantity`) for what a byte count can be:
//!
//! ```text
//! quantity = number [ suffix ]
//! number   = digits [ "." [ digits ] ]  |  "." digits
//! digits   = "0".."9" { "0".."9" }
//! suffix   = "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"      (powers of 1024)
//!          | "k"  | "M"  | "G"  | "T"  | "P"  | "E"       (powers of 1000)
//!          | ( "e" | "E" ) [ "+" ] digits                  (10 to that power, at most 30)
//! ```
//!
//! The value is the number times the suffix, rounded up to a whole byte (as Kubernetes
//! rounds), and must fit in a `u64`. Nothing else is accepted: no sign, no blank anywhere
//! (around it included), no other letter case (`4gi`, `4K`), no unit word (`4GB`), no milli
//! (`500m`), no hexadecimal. `E` alone is exa (`1E` = 10^18 bytes); followed by digits it is
//! an exponent (`1E3` = 1000).

/// The accepted form in words, for the messages that refuse a quantity.
pub const QUANTITY_FORM: &str = "a byte quantity such as 4Gi, 512Mi, 8G, 1.5Gi or 1073741824";

/// Parses a byte quantity by the grammar above: `1073741824`, `4Gi`, `512Mi`, `8G`,
/// `1.5Gi`, `1e9`. `None` for anything else, overflow included.
pub fn parse_quantity(text: &str) -> Option<u64> {
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The number as an exact fraction mantissa / 10^scale.
    let scale = u32::try_from(fraction.len()).ok()?;
    let mut mantissa: u128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(u128::from(b - b'0'))?;
    }
    let (multiplier, divisor_exp) = match suffix {
        "" => (1u128, 0u32),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "k" => (10u128.pow(3), 0),
        "M" => (10u128.pow(6), 0),
        "G" => (10u128.pow(9), 0),
        "T" => (10u128.pow(12), 0),
        "P" => (10u128.pow(15), 0),
        "E" => (10u128.pow(18), 0),
        exponent => {
            let digits = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?;
            let digits = digits.strip_prefix('+').unwrap_or(digits);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let exp: u32 = digits.parse().ok().filter(|e| *e <= 30)?;
            (10u128.pow(exp), 0)
        }
    };
    let numerator = mantissa.checked_mul(multiplier)?;
    let denominator = 10u128.checked_pow(scale.checked_add(divisor_exp)?)?;
    let bytes = numerator.div_ceil(denominator);
    u64::try_from(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_kubernetes_suffixes() {
        assert_eq!(parse_quantity("1073741824"), Some(1 << 30));
        assert_eq!(parse_quantity("4Gi"), Some(4 << 30));
        assert_eq!(parse_quantity("512Mi"), Some(512 << 20));
        assert_eq!(parse_quantity("8G"), Some(8_000_000_000));
        assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_quantity("1e9"), Some(1_000_000_000));
        assert_eq!(parse_quantity("2E3"), Some(2000));
        assert_eq!(parse_quantity("1E"), Some(1_000_000_000_000_000_000));
        assert_eq!(parse_quantity("100k"), Some(100_000));
        assert_eq!(parse_quantity("0"), Some(0));
        assert_eq!(parse_quantity(".5Ki"), Some(512));
    }

    #[test]
    fn fractional_bytes_round_up() {
        assert_eq!(parse_quantity("0.1"), Some(1));
        assert_eq!(parse_quantity("1.0001k"), Some(1001));
    }

    #[test]
    fn every_production_of_the_grammar_is_accepted() {
        // number: digits, digits ".", digits "." digits, "." digits.
        assert_eq!(parse_quantity("7"), Some(7));
        assert_eq!(parse_quantity("7."), Some(7));
        assert_eq!(parse_quantity("7.25"), Some(8));
        assert_eq!(parse_quantity(".25Ki"), Some(256));
        // Every binary and decimal suffix.
        let binary = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
        let decimal = ["k", "M", "G", "T", "P", "E"];
        for (i, suffix) in binary.iter().enumerate() {
            assert_eq!(
                parse_quantity(&format!("3{suffix}")),
                Some(3 << (10 * (i + 1)))
            );
        }
        for (i, suffix) in decimal.iter().enumerate() {
            let exp = u32::try_from(3 * (i + 1)).unwrap();
            assert_eq!(
                parse_quantity(&format!("3{suffix}")),
                Some(3 * 10u64.pow(exp))
            );
        }
        // Exponents: either letter, an optional plus, up to 30.
        assert_eq!(parse_quantity("2e3"), Some(2000));
        assert_eq!(parse_quantity("2E+3"), Some(2000));
        assert_eq!(parse_quantity("1.5e1"), Some(15));
        assert_eq!(parse_quantity("0e30"), Some(0));
        // The largest quantity there is.
        assert_eq!(parse_quantity("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_quantity("15.99Ei"), Some(18_435_214_858_663_483_147));
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for bad in [
            "",
            "4GB",
            "4gi",
            "4 Gi",
            " 4Gi",
            "-1",
            "1.2.3",
            "Gi",
            "4K",
            "500m",
            "1e",
            "1e-3",
            "0x10",
            "18446744073709551616",
            "16Ei",
            "1e31",
            ".",
            "1e+",
            "1e3Gi",
            "1..5",
            "+1",
            "1_000",
            "1,000",
            "\u{663}",
        ] {
            assert_eq!(parse_quantity(bad), None, "{bad:?} should be refused");
        }
    }
}
