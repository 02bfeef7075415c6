//! Byte quantities as Kubernetes writes them (`4Gi`, `512Mi`, `8G`, `1.5Gi`, `1e9`), shared
//! by the shim's settings and the `gpuslice` command so both accept exactly the same forms.

/// Parses a Kubernetes-style byte quantity: `1073741824`, `4Gi`, `512Mi`, `8G`, `1.5Gi`,
/// `1e9`. Fractions round up to whole bytes, as Kubernetes does. `None` for anything else,
/// including overflow, a negative number and the milli suffix `m`.
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
        ] {
            assert_eq!(parse_quantity(bad), None, "{bad:?} should be refused");
        }
    }
}
