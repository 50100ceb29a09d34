//! Benchmark results: one [`Metric`] per figure, printed as a table and
//! written as the JSON array every `cairn bench` suite produces
//! (`docs/benchmarks.md` collects them).

use std::{fs, path::Path};

use anyhow::Context;
use serde::Serialize;

/// One measured figure, optionally beside the baseline it should be read
/// against. `ratio` is `value / baseline_value`: the share of the ceiling
/// Cairn reaches (above 1 means faster than the baseline).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Metric {
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) baseline: Option<String>,
    pub(crate) baseline_value: Option<f64>,
    pub(crate) ratio: Option<f64>,
}

impl Metric {
    pub(crate) fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            name: name.into(),
            value,
            unit,
            baseline: None,
            baseline_value: None,
            ratio: None,
        }
    }

    /// Attaches a baseline when there is one (there is none on `memory:`).
    pub(crate) fn against(mut self, baseline: Option<(&str, f64)>) -> Self {
        if let Some((name, value)) = baseline {
            self.baseline = Some(name.to_owned());
            self.baseline_value = Some(value);
            // A zero or non-finite baseline would make the ratio
            // meaningless (and JSON has no infinity), so leave it null.
            self.ratio = (value > 0.0 && value.is_finite()).then(|| self.value / value);
        }
        self
    }
}

/// Formats a value for the table: latencies keep sub-millisecond detail,
/// rates are whole numbers once they are large enough for decimals to be noise.
fn format_value(value: f64, unit: &str) -> String {
    if unit == "ms" {
        format!("{value:.3}")
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// Renders `metrics` as an aligned text table.
pub(crate) fn table(metrics: &[Metric]) -> String {
    let header = [
        "name",
        "value",
        "unit",
        "baseline",
        "baseline value",
        "ratio",
    ];
    let rows: Vec<[String; 6]> = metrics
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                format_value(m.value, m.unit),
                m.unit.to_owned(),
                m.baseline.clone().unwrap_or_else(|| "-".into()),
                m.baseline_value
                    .map_or_else(|| "-".into(), |v| format_value(v, m.unit)),
                m.ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}")),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 6]| {
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // Names and units read best left-aligned, numbers right-aligned.
            let numeric = matches!(i, 1 | 4 | 5);
            let pad = w - cell.chars().count();
            if numeric {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
            out.push_str(if i + 1 < cells.len() { "  " } else { "\n" });
        }
    };
    line(header);
    line(widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str));
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

/// Writes `metrics` to `path` as a pretty-printed JSON array.
pub(crate) fn write_json(path: &Path, metrics: &[Metric]) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(metrics).context("encoding results as JSON")?;
    text.push('\n');
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_value_over_baseline_and_null_without_one() {
        let m = Metric::new("append_1_writer", 500.0, "events/s").against(Some(("raw", 1000.0)));
        assert_eq!(m.ratio, Some(0.5));
        let m = Metric::new("append_1_writer", 500.0, "events/s").against(None);
        assert_eq!(m.baseline, None);
        assert_eq!(m.ratio, None);
        let m = Metric::new("x", 1.0, "events/s").against(Some(("raw", 0.0)));
        assert_eq!(m.ratio, None);
    }

    #[test]
    fn json_has_every_field_with_nulls() {
        let v = serde_json::to_value([Metric::new("p99", 1.5, "ms")]).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "name": "p99", "value": 1.5, "unit": "ms",
                "baseline": null, "baseline_value": null, "ratio": null
            }])
        );
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&[
            Metric::new("a", 12345.6, "events/s").against(Some(("raw", 20000.0))),
            Metric::new("a_p99", 0.25, "ms"),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[2].contains("12346") && lines[2].contains("0.62"));
        assert!(lines[3].contains("0.250"));
        assert!(lines.iter().all(|l| l.len() == lines[0].len()));
    }
}
