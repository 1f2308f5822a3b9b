//! Sizes for people.

/// Bytes for people: `12.3 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Reads a size as people write it: `1500`, `500M`, `2 GB`, `1.5G`, `64KiB`. Units are
/// decimal (`k`, `M`, `G`, `T`, as [`human_bytes`] prints them) or binary (`Ki`, `Mi`, `Gi`,
/// `Ti`); a trailing `B` is optional and case does not matter.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim().to_ascii_lowercase());
    let bad = || format!("{s:?} is not a size (e.g. 1500, 500M, 2 GB)");
    if num.is_empty() {
        return Err(bad());
    }
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "t" => 1_000_000_000_000,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        "ti" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit (use k, M, G, T, Ki, Mi, Gi or Ti)"
            ))
        }
    };
    let v = if num.contains('.') {
        let f: f64 = num.parse().map_err(|_| bad())?;
        let v = f * scale as f64;
        if !v.is_finite() || v >= u64::MAX as f64 {
            return Err(format!("{s:?} is too large"));
        }
        v.round() as u64
    } else {
        num.parse::<u64>()
            .map_err(|_| bad())?
            .checked_mul(scale)
            .ok_or_else(|| format!("{s:?} is too large"))?
    };
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_bytes("1500"), Ok(1500));
        assert_eq!(parse_bytes("500M"), Ok(500_000_000));
        assert_eq!(parse_bytes("2 GB"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("1.5g"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("64KiB"), Ok(65_536));
        assert_eq!(parse_bytes("12.3 MB"), Ok(12_300_000));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("M").is_err());
        assert!(parse_bytes("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_bytes("99999999999T")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_bytes("-5").is_err());
    }

    #[test]
    fn printed_sizes_read_back() {
        for n in [0u64, 999, 1_000, 123_456_789, 5_000_000_000] {
            let shown = human_bytes(n);
            let back = parse_bytes(&shown).unwrap();
            // One decimal: within 5 % of the value.
            assert!(
                back.abs_diff(n) * 20 <= n.max(1),
                "{n} -> {shown} -> {back}"
            );
        }
    }
}
