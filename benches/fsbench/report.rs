//! Statistics (median, nearest-rank percentile) and the formatting of tables and JSON. Every
//! figure scripts/bench prints or writes is computed here or beside its workload, never in
//! the shell.

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile.
pub(crate) fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

pub(crate) fn jnum(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6e}")
    } else {
        "null".into()
    }
}

pub(crate) fn jarr(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| jnum(*x)).collect();
    format!("[{}]", items.join(","))
}

pub(crate) fn ms(s: f64) -> String {
    if s.is_nan() {
        return "n/a".into();
    }
    let m = s.max(0.0) * 1e3;
    if m >= 100.0 {
        format!("{m:.0} ms")
    } else if m >= 10.0 {
        format!("{m:.1} ms")
    } else {
        format!("{m:.2} ms")
    }
}

pub(crate) fn us(s: f64) -> String {
    if s.is_nan() {
        return "n/a".into();
    }
    format!("{:.0} µs", s * 1e6)
}

pub(crate) fn with_commas(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
