//! The one table `make bench` prints, as Markdown so BENCHMARKS.md can hold
//! it verbatim, and the little statistics its rows need.

pub struct Row {
    pub item: &'static str,
    pub measure: String,
    pub sj: String,
    pub base: String,
    pub ratio: String,
    pub target: String,
    pub note: String,
}

#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
    pub failures: usize,
}

impl Table {
    #[allow(clippy::too_many_arguments)]
    pub fn row(
        &mut self,
        item: &'static str,
        measure: impl Into<String>,
        sj: impl Into<String>,
        base: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
        note: impl Into<String>,
    ) {
        self.rows.push(Row {
            item,
            measure: measure.into(),
            sj: sj.into(),
            base: base.into(),
            ratio: ratio.into(),
            target: target.into(),
            note: note.into(),
        });
    }

    /// A measurement that could not be made: shown, and counted.
    pub fn fail(&mut self, item: &'static str, measure: impl Into<String>, err: &str) {
        sj::log::warn(err);
        self.failures += 1;
        let err: String = err.chars().take(400).collect();
        self.row(item, measure, "failed", "", "", "", err.replace('|', "/"));
    }

    pub fn print(&self) {
        let head = [
            "#",
            "measure",
            "sj",
            "baseline",
            "sj/baseline",
            "target",
            "notes",
        ];
        let cells: Vec<[&str; 7]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.item,
                    r.measure.as_str(),
                    r.sj.as_str(),
                    r.base.as_str(),
                    r.ratio.as_str(),
                    r.target.as_str(),
                    r.note.as_str(),
                ]
            })
            .collect();
        let mut w = head.map(|h| h.chars().count());
        for c in &cells {
            for (i, s) in c.iter().enumerate() {
                w[i] = w[i].max(s.chars().count());
            }
        }
        let line = |c: &[&str; 7]| {
            let mut s = String::from("|");
            for (i, x) in c.iter().enumerate() {
                let pad = w[i] - x.chars().count();
                s.push(' ');
                s.push_str(x);
                s.push_str(&" ".repeat(pad));
                s.push_str(" |");
            }
            s
        };
        println!("{}", line(&head));
        let mut sep = String::from("|");
        for x in w {
            sep.push_str(&"-".repeat(x + 2));
            sep.push('|');
        }
        println!("{sep}");
        for c in &cells {
            println!("{}", line(c));
        }
    }
}

/// Value at quantile `q` (0..=1) of `v`, nearest rank.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Least-squares line y = a + b x: (a, b, r²).
pub fn fit(pts: &[(f64, f64)]) -> (f64, f64, f64) {
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let syy: f64 = pts.iter().map(|p| (p.1 - my).powi(2)).sum();
    let b = sxy / sxx;
    let r2 = if syy == 0.0 {
        1.0
    } else {
        sxy * sxy / (sxx * syy)
    };
    (my - b * mx, b, r2)
}

/// 1234567 -> "1,234,567".
pub fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

pub fn size(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_fits() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        let (a, b, r2) = fit(&[(1.0, 3.0), (2.0, 5.0), (4.0, 9.0)]);
        assert!((a - 1.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-9 && (r2 - 1.0).abs() < 1e-9);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(size(262144), "256 KiB");
        assert_eq!(size(100), "100 B");
    }
}
