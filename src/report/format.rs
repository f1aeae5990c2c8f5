//! How numbers read in a report: one place decides digits, units and the mark for a number
//! that does not exist, so the Markdown, the HTML, the plots and the generated sentences agree.
//!
//! | function    | reads                        | rule                                                        |
//! |-------------|------------------------------|-------------------------------------------------------------|
//! | [`sig`]     | `12.3`, `0.0123`, `1.23e-5`  | `n` significant digits; scientific below 1e-3 and from 1e6; an integer part is never rounded away |
//! | [`estimate`]| `12.35 [12.31, 12.38]`       | a mean and its interval with the decimals of two significant digits of the half-width, so the interval shows and the mean claims no more precision than it has |
//! | [`pct`]     | `+12.3%`, `-4.0%`            | signed, one decimal                                          |
//! | [`pvalue`]  | `0.0123`, `2.8e-218`         | three significant digits, scientific below 0.001; never rounded to 0 |
//! | [`plain`]   | `0.05`                       | a configured value (a threshold, α) as written, exactly      |
//! | [`count`]   | `16,384`                     | digits grouped by three                                      |
//! | [`bytes`]   | `512 B`, `1.23 MiB`          | binary units, three significant digits                       |
//! | [`share`]   | `12.5%`                      | a fraction in `[0, 1]` as a percentage, three significant digits |
//!
//! A number that is undefined (`None`, or not finite) is [`UNDEFINED`], never `NaN`, `inf` or
//! an empty cell; the templates say next to each table what the mark means there.

/// The mark of a number that does not exist.
pub(crate) const UNDEFINED: &str = "—";

/// Decimals that show `digits` significant digits of `x` (0 for `x` = 0).
fn decimals(x: f64, digits: usize) -> usize {
    if x == 0.0 {
        return 0;
    }
    let magnitude = x.abs().log10().floor() as i64;
    (digits as i64 - 1 - magnitude).max(0) as usize
}

/// `x` with `digits` significant digits (see the module doc).
pub(crate) fn sig(x: f64, digits: usize) -> String {
    if !x.is_finite() {
        return UNDEFINED.to_string();
    }
    let digits = digits.max(1);
    let magnitude = x.abs();
    if magnitude != 0.0 && !(1e-3..1e6).contains(&magnitude) {
        return format!("{:.*e}", digits - 1, x);
    }
    let d = decimals(x, digits);
    let text = format!("{x:.d$}");
    // Rounding can carry into the next power of ten (9.996 → 10.00): recount from the result.
    let rounded: f64 = text.parse().unwrap_or(x);
    let d2 = decimals(rounded, digits).min(d);
    if d2 == d { text } else { format!("{rounded:.d2$}") }
}

/// [`sig`] of an optional number.
pub(crate) fn sig_opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| UNDEFINED.to_string(), |x| sig(x, digits))
}

/// Decimals for a mean with the interval `[lo, hi]`: two significant digits of the half-width.
pub(crate) fn interval_decimals(lo: f64, hi: f64) -> Option<usize> {
    let half = (hi - lo).abs() / 2.0;
    (half.is_finite() && half > 0.0).then(|| decimals(half, 2).min(9))
}

/// A configured value as written, in its shortest exact form: `0.05`, `0.001`.
pub(crate) fn plain(x: f64) -> String {
    if x.is_finite() { format!("{x}") } else { UNDEFINED.to_string() }
}

/// `mean [lo, hi]` (see the module doc); the mean alone, four significant digits, without an
/// interval.
pub(crate) fn estimate(mean: Option<f64>, lo: Option<f64>, hi: Option<f64>) -> String {
    let Some(mean) = mean.filter(|m| m.is_finite()) else { return UNDEFINED.to_string() };
    match (lo, hi) {
        (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() && mean.abs() < 1e6 && mean.abs() >= 1e-3 => match interval_decimals(lo, hi) {
            Some(d) => format!("{mean:.d$} [{lo:.d$}, {hi:.d$}]"),
            None => sig(mean, 4),
        },
        (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() => format!("{} [{}, {}]", sig(mean, 3), sig(lo, 3), sig(hi, 3)),
        _ => sig(mean, 4),
    }
}

/// The interval alone, `[lo, hi]`, with the decimals [`estimate`] gives it.
pub(crate) fn interval(lo: Option<f64>, hi: Option<f64>) -> String {
    match (lo.filter(|x| x.is_finite()), hi.filter(|x| x.is_finite())) {
        (Some(lo), Some(hi)) => match interval_decimals(lo, hi) {
            Some(d) if lo.abs().max(hi.abs()) < 1e6 => format!("[{lo:.d$}, {hi:.d$}]"),
            _ => format!("[{}, {}]", sig(lo, 3), sig(hi, 3)),
        },
        _ => UNDEFINED.to_string(),
    }
}

/// A signed percentage with one decimal: `+12.3%`.
pub(crate) fn pct(x: Option<f64>) -> String {
    match x.filter(|x| x.is_finite()) {
        Some(x) => {
            let text = format!("{x:+.1}%");
            // `-0.0` reads as a change that is not there.
            if text == "-0.0%" { "+0.0%".to_string() } else { text }
        }
        None => UNDEFINED.to_string(),
    }
}

/// A p-value: three significant digits, scientific below 0.001.
pub(crate) fn pvalue(p: Option<f64>) -> String {
    match p.filter(|p| p.is_finite()) {
        Some(0.0) => "< 1e-300".to_string(),
        Some(p) if p < 1e-3 => format!("{p:.1e}"),
        Some(p) => sig(p, 3),
        None => UNDEFINED.to_string(),
    }
}

/// An integer with digits grouped by three: `16,384`.
pub(crate) fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A size in binary units: `512 B`, `1.23 MiB`.
pub(crate) fn bytes(n: f64) -> String {
    if !n.is_finite() || n < 0.0 {
        return UNDEFINED.to_string();
    }
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024.0 {
        return format!("{} B", n as u64);
    }
    let mut v = n;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{} {unit}", sig(v, 3))
}

/// A fraction as a percentage with three significant digits: `0.125` → `12.5%`.
pub(crate) fn share(x: Option<f64>) -> String {
    match x.filter(|x| x.is_finite()) {
        Some(0.0) => "0%".to_string(),
        Some(x) => {
            let p = x * 100.0;
            // Below 0.001 % scientific notation would be noise in a rate.
            if p.abs() < 1e-3 { "< 0.001%".to_string() } else { format!("{}%", sig(p, 3)) }
        }
        None => UNDEFINED.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn significant_digits_keep_the_integer_part_and_carry_over_powers_of_ten() {
        for (x, digits, want) in [
            (12.3456, 3, "12.3"),
            (0.012345, 3, "0.0123"),
            (123456.7, 3, "123457"),
            (9.996, 3, "10.0"),
            (0.0, 3, "0"),
            (-4.5678, 2, "-4.6"),
            (1.234e-5, 3, "1.23e-5"),
            (2.5e7, 2, "2.5e7"),
        ] {
            assert_eq!(sig(x, digits), want, "{x} with {digits} digits");
        }
        assert_eq!(sig(f64::NAN, 3), UNDEFINED);
        assert_eq!(sig(f64::INFINITY, 3), UNDEFINED);
    }

    #[test]
    fn an_estimate_shows_two_significant_digits_of_its_half_width() {
        assert_eq!(estimate(Some(12.3456), Some(12.31), Some(12.38)), "12.346 [12.310, 12.380]");
        assert_eq!(estimate(Some(250.0), Some(200.0), Some(300.0)), "250 [200, 300]");
        assert_eq!(estimate(Some(12.3456), None, None), "12.35");
        assert_eq!(estimate(None, Some(1.0), Some(2.0)), UNDEFINED);
    }

    #[test]
    fn undefined_numbers_never_read_as_nan_or_empty() {
        for text in [pct(None), pvalue(None), share(None), sig_opt(None, 3), interval(None, Some(1.0)), pct(Some(f64::NAN))] {
            assert_eq!(text, UNDEFINED);
        }
    }

    #[test]
    fn percentages_p_values_counts_and_sizes() {
        assert_eq!(pct(Some(12.345)), "+12.3%");
        assert_eq!(pct(Some(-0.01)), "+0.0%");
        assert_eq!(pct(Some(-45.25)), "-45.2%");
        assert_eq!(pvalue(Some(0.01234)), "0.0123");
        assert_eq!(pvalue(Some(2.787e-218)), "2.8e-218");
        assert_eq!(pvalue(Some(0.0)), "< 1e-300");
        assert_eq!(count(16384), "16,384");
        assert_eq!(count(-1234567), "-1,234,567");
        assert_eq!(count(999), "999");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1.5 * 1024.0 * 1024.0), "1.50 MiB");
        assert_eq!(share(Some(0.125)), "12.5%");
        assert_eq!(share(Some(1.0)), "100%");
    }
}
