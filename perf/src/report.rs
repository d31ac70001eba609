//! Measurement helpers and the report table.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latency histogram in nanoseconds (1 ns .. 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// One measured row.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub ops: u64,
    pub elapsed: Duration,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
}

impl Row {
    pub fn new(
        name: impl Into<String>,
        ops: u64,
        elapsed: Duration,
        h: Option<&Histogram<u64>>,
    ) -> Row {
        Row {
            name: name.into(),
            ops,
            elapsed,
            p50_ns: h.map(|h| h.value_at_quantile(0.5)),
            p99_ns: h.map(|h| h.value_at_quantile(0.99)),
        }
    }
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "ops": self.ops,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "ops_per_sec": self.ops_per_sec(),
            "p50_ns": self.p50_ns,
            "p99_ns": self.p99_ns,
        })
    }
}

/// A group of rows: the subject first, then its baselines.
#[derive(Debug, Clone)]
pub struct Group {
    pub title: String,
    pub rows: Vec<Row>,
}

impl Group {
    /// Throughput of row 0 divided by that of the named baseline.
    pub fn ratio_to(&self, baseline: &str) -> Option<f64> {
        let subject = self.rows.first()?;
        let base = self.rows.iter().find(|r| r.name == baseline)?;
        Some(subject.ops_per_sec() / base.ops_per_sec())
    }

    pub fn render(&self) -> String {
        let mut s = format!("\n## {}\n", self.title);
        s += &format!(
            "{:<34} {:>12} {:>10} {:>10} {:>8}\n",
            "", "ops/s", "p50 µs", "p99 µs", "ratio"
        );
        let base = self.rows.first().map(|r| r.ops_per_sec()).unwrap_or(1.0);
        for r in &self.rows {
            let us =
                |v: Option<u64>| v.map_or("-".to_string(), |n| format!("{:.2}", n as f64 / 1000.0));
            s += &format!(
                "{:<34} {:>12.0} {:>10} {:>10} {:>8}\n",
                r.name,
                r.ops_per_sec(),
                us(r.p50_ns),
                us(r.p99_ns),
                if std::ptr::eq(r, &self.rows[0]) {
                    "1.00".to_string()
                } else {
                    format!("{:.2}x", base / r.ops_per_sec())
                }
            );
        }
        s += "(ratio: the first row's ops/s divided by this row's, measured in the same run)\n";
        s
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "title": self.title,
            "rows": self.rows.iter().map(Row::json).collect::<Vec<_>>(),
        })
    }
}
