//! The Prometheus text exposition format (version 0.0.4), written in this one place.
//!
//! | rule of the format | where it is upheld |
//! | --- | --- |
//! | a family's `# HELP` and `# TYPE` lines come once, before its samples | `Exposition::family` |
//! | metric and label names are well formed | `debug_assert`s in `Exposition::family`, `write_sample` |
//! | help text escapes `\` and newline; label values also `"` | `write_escaped` |
//! | values are Prometheus numbers (`NaN`, `+Inf`, `-Inf`, no Rust-only forms) | [`SampleValue`] |
//! | counters are never negative | [`Counters::sample`] takes a `u64` |
//! | histogram buckets are cumulative and end with `+Inf`, equal to `_count` | [`Histograms::series`] |

use std::fmt::Write;

use super::HistogramSnapshot;

/// Label pairs of one sample, in the order they are written.
pub type Labels<'l> = [(&'l str, &'l str)];

/// Appends metric families to the body of one scrape.
pub struct Exposition<'a> {
    /// The body being written.
    out: &'a mut String,
    /// Families written so far: Prometheus rejects a scrape that declares a family twice.
    families: Vec<&'static str>,
}

impl<'a> Exposition<'a> {
    pub fn new(out: &'a mut String) -> Self {
        Self {
            out,
            families: Vec::new(),
        }
    }

    /// Starts a counter family; add its samples to the result.
    pub fn counter(&mut self, name: &'static str, help: &str) -> Counters<'_> {
        Counters {
            out: self.family(name, help, "counter"),
            name,
        }
    }

    /// Starts a gauge family; add its samples to the result.
    pub fn gauge(&mut self, name: &'static str, help: &str) -> Gauges<'_> {
        Gauges {
            out: self.family(name, help, "gauge"),
            name,
        }
    }

    /// Starts a histogram family; add one series per label set to the result.
    pub fn histogram(&mut self, name: &'static str, help: &str) -> Histograms<'_> {
        Histograms {
            out: self.family(name, help, "histogram"),
            name,
        }
    }

    fn family(&mut self, name: &'static str, help: &str, kind: &str) -> &mut String {
        debug_assert!(is_metric_name(name), "invalid metric name {name:?}");
        debug_assert!(!self.families.contains(&name), "metric family {name} written twice");
        self.families.push(name);
        let out = &mut *self.out;
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        write_escaped(out, help, false);
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push(' ');
        out.push_str(kind);
        out.push('\n');
        out
    }
}

/// The samples of a counter family.
pub struct Counters<'e> {
    out: &'e mut String,
    name: &'static str,
}

impl Counters<'_> {
    pub fn sample(&mut self, labels: &Labels<'_>, value: u64) -> &mut Self {
        write_sample(self.out, self.name, "", labels, None, value);
        self
    }
}

/// The samples of a gauge family.
pub struct Gauges<'e> {
    out: &'e mut String,
    name: &'static str,
}

impl Gauges<'_> {
    pub fn sample(&mut self, labels: &Labels<'_>, value: impl SampleValue) -> &mut Self {
        write_sample(self.out, self.name, "", labels, None, value);
        self
    }
}

/// The series of a histogram family.
pub struct Histograms<'e> {
    out: &'e mut String,
    name: &'static str,
}

impl Histograms<'_> {
    /// One series: its `_bucket` lines (cumulative, then `+Inf`), `_sum` and `_count`.
    pub fn series(&mut self, labels: &Labels<'_>, histogram: &HistogramSnapshot) -> &mut Self {
        let mut cumulative = 0;
        let mut bound = String::new();
        for (upper, count) in histogram.bounds.iter().zip(&histogram.counts) {
            cumulative += count;
            bound.clear();
            upper.write_to(&mut bound);
            write_sample(self.out, self.name, "_bucket", labels, Some(("le", &bound)), cumulative);
        }
        cumulative += histogram.overflow;
        write_sample(self.out, self.name, "_bucket", labels, Some(("le", "+Inf")), cumulative);
        write_sample(self.out, self.name, "_sum", labels, None, histogram.sum);
        write_sample(self.out, self.name, "_count", labels, None, cumulative);
        self
    }
}

/// A number as Prometheus reads it.
pub trait SampleValue: Copy {
    fn write_to(self, out: &mut String);
}

macro_rules! integer_sample_value {
    ($($t:ty),*) => {$(
        impl SampleValue for $t {
            fn write_to(self, out: &mut String) {
                // Writing to a String cannot fail.
                let _ = write!(out, "{self}");
            }
        }
    )*};
}

integer_sample_value!(u64, i64, u32, i32, usize);

impl SampleValue for f64 {
    fn write_to(self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            // Rust's shortest round-trip form: `0.0025`, `10`, never an exponent.
            let _ = write!(out, "{self}");
        }
    }
}

/// `name{labels} value` on a line of its own; `extra` (a histogram's `le`) goes last.
fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &Labels<'_>,
    extra: Option<(&str, &str)>,
    value: impl SampleValue,
) {
    out.push_str(name);
    out.push_str(suffix);
    let mut pairs = labels.iter().copied().chain(extra).peekable();
    if pairs.peek().is_some() {
        out.push('{');
        for (i, (label, value)) in pairs.enumerate() {
            debug_assert!(is_label_name(label), "invalid label name {label:?} on {name}");
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            write_escaped(out, value, true);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    value.write_to(out);
    out.push('\n');
}

/// Escapes `\` and newline (help text), and `"` too in a label value.
fn write_escaped(out: &mut String, text: &str, label_value: bool) {
    let special = |c: char| c == '\\' || c == '\n' || (label_value && c == '"');
    if !text.contains(special) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label_value => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::Histogram;

    fn written(write: impl FnOnce(&mut Exposition<'_>)) -> String {
        let mut out = String::new();
        write(&mut Exposition::new(&mut out));
        out
    }

    #[test]
    fn a_family_has_help_and_type_lines_before_its_samples() {
        let out = written(|text| {
            text.counter("jobs_total", "Jobs done.")
                .sample(&[("queue", "a")], 3)
                .sample(&[("queue", "b")], 0);
            text.gauge("depth", "Queue depth.").sample(&[], -2);
        });
        assert_eq!(
            out,
            "# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\n\
             jobs_total{queue=\"a\"} 3\njobs_total{queue=\"b\"} 0\n\
             # HELP depth Queue depth.\n# TYPE depth gauge\ndepth -2\n"
        );
    }

    #[test]
    fn label_values_and_help_text_are_escaped() {
        let out = written(|text| {
            text.gauge("g", "A \\ help\nline with \"quotes\".")
                .sample(&[("route", "a\"b\\c\nd"), ("plain", "x")], 1);
        });
        assert_eq!(
            out,
            "# HELP g A \\\\ help\\nline with \"quotes\".\n# TYPE g gauge\n\
             g{route=\"a\\\"b\\\\c\\nd\",plain=\"x\"} 1\n"
        );
    }

    #[test]
    fn floats_are_prometheus_numbers() {
        let mut out = String::new();
        for value in [0.0025, 10.0, 20.0035, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            value.write_to(&mut out);
            out.push(' ');
        }
        assert_eq!(out, "0.0025 10 20.0035 NaN +Inf -Inf ");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_inf_equals_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let out = written(|text| {
            text.histogram("x_seconds", "test")
                .series(&[("route", "/a")], &h.snapshot());
        });
        assert!(
            out.starts_with("# HELP x_seconds test\n# TYPE x_seconds histogram\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"0.001\"} 1\n"), "{out}");
        assert!(
            out.contains("x_seconds_bucket{route=\"/a\",le=\"0.0025\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count{route=\"/a\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum{route=\"/a\"} 20.0035\n"), "{out}");
        let unlabelled = written(|text| {
            text.histogram("y_seconds", "test").series(&[], &h.snapshot());
        });
        assert!(unlabelled.contains("y_seconds_bucket{le=\"+Inf\"} 3\ny_seconds_sum 20.0035\ny_seconds_count 3\n"));
    }

    #[test]
    #[should_panic(expected = "written twice")]
    #[cfg(debug_assertions)]
    fn a_family_written_twice_is_caught_in_debug_builds() {
        written(|text| {
            text.gauge("g", "first");
            text.gauge("g", "second");
        });
    }
}
