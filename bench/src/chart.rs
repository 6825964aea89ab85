//! Line charts as SVG, written by hand so the bench needs no plotting library: one or more
//! panels stacked vertically, each with axes, ticks, a labelled polyline per series and a
//! legend. The soak draws CPU per post and delivery latency over time with it; the ramp draws
//! latency and acknowledged rate against the offered rate.
//!
//! Points whose value is not finite (an interval without posts, say) break a series' line
//! instead of being drawn; a logarithmic axis also leaves out values at or below zero.

/// Appends one formatted line to the document.
macro_rules! emit {
    ($svg:expr, $($arg:tt)*) => {{
        $svg.push_str(&format!($($arg)*));
        $svg.push('\n');
    }};
}

/// Width of the whole picture, in SVG user units (pixels).
const WIDTH: f64 = 900.0;
/// Height of one panel's plotting area.
const PLOT_HEIGHT: f64 = 260.0;
/// Room left of the plot for the y tick labels and the y axis label.
const LEFT: f64 = 80.0;
/// Room right of the plot for the legend.
const RIGHT: f64 = 170.0;
/// Room above a panel for its title.
const PANEL_TOP: f64 = 40.0;
/// Room below a panel's plot for the x tick labels and the x axis label.
const PANEL_BOTTOM: f64 = 55.0;
/// Room above the first panel for the picture's title.
const TITLE: f64 = 36.0;
/// Series colours, in order (distinguishable in colour and in grey).
const PALETTE: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf",
];

/// One line of a panel.
#[derive(Clone, Debug)]
pub struct Series {
    /// Shown in the legend.
    pub name: String,
    /// `(x, y)` in the panel's units, in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed: a target or a reference line rather than a measurement.
    pub dashed: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            dashed: false,
        }
    }

    /// A dashed series (a target, a reference).
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// One chart: its axes are fitted to its series.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A logarithmic y axis (latencies that span orders of magnitude).
    pub log_y: bool,
}

/// The SVG document of `panels` stacked under `title`.
pub fn render(title: &str, panels: &[Panel]) -> String {
    let panel_height = PANEL_TOP + PLOT_HEIGHT + PANEL_BOTTOM;
    let height = TITLE + panel_height * panels.len().max(1) as f64;
    let mut svg = String::new();
    emit!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    emit!(svg, r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#);
    emit!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut svg, panel, TITLE + panel_height * i as f64);
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes [`render`]'s document to `path`.
pub fn write(path: &std::path::Path, title: &str, panels: &[Panel]) -> std::io::Result<()> {
    std::fs::write(path, render(title, panels))
}

/// How values map to positions along one axis.
#[derive(Clone, Copy, Debug)]
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    /// Pixel positions of `lo` and `hi`.
    from: f64,
    to: f64,
}

impl Scale {
    fn at(&self, v: f64) -> f64 {
        let (v, lo, hi) = if self.log {
            (v.log10(), self.lo.log10(), self.hi.log10())
        } else {
            (v, self.lo, self.hi)
        };
        let share = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
        self.from + share * (self.to - self.from)
    }
}

fn draw_panel(svg: &mut String, panel: &Panel, top: f64) {
    let plot_top = top + PANEL_TOP;
    let plot_bottom = plot_top + PLOT_HEIGHT;
    let plot_left = LEFT;
    let plot_right = WIDTH - RIGHT;
    emit!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="14">{}</text>"#,
        (plot_left + plot_right) / 2.0,
        top + 24.0,
        escape(&panel.title)
    );
    let usable = |(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!panel.log_y || *y > 0.0);
    let points: Vec<(f64, f64)> = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(usable)
        .collect();
    let (x_lo, x_hi) = span(points.iter().map(|p| p.0));
    let (y_lo, y_hi) = span(points.iter().map(|p| p.1));
    let x_ticks = linear_ticks(x_lo.min(0.0), x_hi, 8);
    let y_ticks = if panel.log_y {
        log_ticks(y_lo, y_hi)
    } else {
        linear_ticks(y_lo.min(0.0), y_hi, 6)
    };
    let x = Scale {
        lo: x_ticks[0],
        hi: x_ticks[x_ticks.len() - 1],
        log: false,
        from: plot_left,
        to: plot_right,
    };
    let y = Scale {
        lo: y_ticks[0],
        hi: y_ticks[y_ticks.len() - 1],
        log: panel.log_y,
        from: plot_bottom,
        to: plot_top,
    };

    // Grid and tick labels.
    for t in &y_ticks {
        let py = y.at(*t);
        emit!(
            svg,
            r##"<line x1="{plot_left}" y1="{py:.1}" x2="{plot_right}" y2="{py:.1}" stroke="#e0e0e0"/>"##
        );
        emit!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            plot_left - 6.0,
            py + 4.0,
            tick_label(*t)
        );
    }
    for t in &x_ticks {
        let px = x.at(*t);
        emit!(
            svg,
            r##"<line x1="{px:.1}" y1="{plot_top}" x2="{px:.1}" y2="{plot_bottom}" stroke="#f0f0f0"/>"##
        );
        emit!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            plot_bottom + 16.0,
            tick_label(*t)
        );
    }
    // Axes and their labels.
    emit!(
        svg,
        r#"<polyline points="{plot_left},{plot_top} {plot_left},{plot_bottom} {plot_right},{plot_bottom}" fill="none" stroke="black"/>"#
    );
    emit!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (plot_left + plot_right) / 2.0,
        plot_bottom + 40.0,
        escape(&panel.x_label)
    );
    let (lx, ly) = (18.0, (plot_top + plot_bottom) / 2.0);
    emit!(
        svg,
        r#"<text x="{lx}" y="{ly}" text-anchor="middle" transform="rotate(-90 {lx} {ly})">{}</text>"#,
        escape(&panel.y_label)
    );

    // Series and legend.
    for (i, series) in panel.series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let dash = if series.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        for run in runs(&series.points, &usable) {
            let coords: Vec<String> = run
                .iter()
                .map(|(vx, vy)| format!("{:.1},{:.1}", x.at(*vx), y.at(*vy)))
                .collect();
            if run.len() == 1 {
                emit!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                    x.at(run[0].0),
                    y.at(run[0].1)
                );
            } else {
                emit!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
                    coords.join(" ")
                );
                for (vx, vy) in run.iter().filter(|_| !series.dashed) {
                    emit!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"#,
                        x.at(*vx),
                        y.at(*vy)
                    );
                }
            }
        }
        let ly = plot_top + 10.0 + 20.0 * i as f64;
        let lx = plot_right + 16.0;
        emit!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/>"#,
            lx + 24.0
        );
        emit!(
            svg,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            escape(&series.name)
        );
    }
}

/// The stretches of consecutive usable points (an unusable point breaks the line).
fn runs<'a>(points: &'a [(f64, f64)], usable: &impl Fn(&(f64, f64)) -> bool) -> Vec<&'a [(f64, f64)]> {
    points.split(|p| !usable(p)).filter(|run| !run.is_empty()).collect()
}

/// Least and greatest of `values`; `(0, 1)` when there are none.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) }
}

/// Round tick values (1, 2 or 5 times a power of ten apart) covering `[lo, hi]`, about
/// `count` of them; the first is at or below `lo`, the last at or above `hi`.
pub fn linear_ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else if lo == 0.0 {
        (0.0, 1.0)
    } else {
        // One value: a span around it.
        (lo - lo.abs() * 0.5, lo + lo.abs() * 0.5)
    };
    let rough = (hi - lo) / count.max(1) as f64;
    let exponent = rough.log10().floor() as i32;
    let magnitude = 10f64.powi(exponent);
    let mantissa = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| m * magnitude >= rough)
        .unwrap_or(10.0);
    let step = mantissa * magnitude;
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    // k * mantissa is a whole number; dividing it by a power of ten (rather than multiplying by
    // a fraction or adding steps up) gives the nearest double to the round value.
    let value = |k: i64| {
        let units = k as f64 * mantissa;
        if exponent >= 0 {
            units * magnitude
        } else {
            units / 10f64.powi(-exponent)
        }
    };
    (first..=last).map(value).collect()
}

/// Powers of ten covering `[lo, hi]` (both above zero), with 2 and 5 times each between
/// when the span is short.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (lo, hi) = if lo > 0.0 && hi >= lo { (lo, hi) } else { (1.0, 10.0) };
    let first = lo.log10().floor() as i32;
    let mut last = hi.log10().ceil() as i32;
    if last == first {
        last += 1;
    }
    let decades = last - first;
    let mut ticks = Vec::new();
    for e in first..=last {
        let base = 10f64.powi(e);
        ticks.push(base);
        if decades <= 3 && e < last {
            ticks.push(2.0 * base);
            ticks.push(5.0 * base);
        }
    }
    // Trim the 2x and 5x ticks beyond the data at both ends, keeping one tick outside it.
    let start = ticks.iter().rposition(|t| *t <= lo).unwrap_or(0);
    let end = ticks.iter().position(|t| *t >= hi).unwrap_or(ticks.len() - 1);
    ticks[start..=end].to_vec()
}

/// A tick value without trailing zeros: `0.05`, `2`, `1500`, `12k` from 10,000 up.
fn tick_label(v: f64) -> String {
    if v.abs() >= 10_000.0 && (v / 1000.0).fract() == 0.0 {
        return format!("{}k", v / 1000.0);
    }
    let text = format!("{v:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" { "0".to_owned() } else { text.to_owned() }
}

/// Text made safe for SVG content and attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_ticks_are_round_and_cover_the_data() {
        assert_eq!(linear_ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(linear_ticks(0.0, 9.3, 6), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = linear_ticks(500.0, 5000.0, 10);
        assert_eq!((t[0], t[t.len() - 1]), (500.0, 5000.0));
        assert!(t.windows(2).all(|w| (w[1] - w[0] - 500.0).abs() < 1e-9), "{t:?}");
        // A single value gets a span around it.
        let t = linear_ticks(3.0, 3.0, 5);
        assert!(t[0] <= 3.0 && t[t.len() - 1] >= 3.0 && t.len() >= 2, "{t:?}");
        assert_eq!(linear_ticks(0.0, 0.0, 5).last(), Some(&1.0));
    }

    #[test]
    fn log_ticks_span_decades() {
        assert_eq!(log_ticks(1.5, 80.0), vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(log_ticks(0.3, 3000.0), vec![0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]);
        assert_eq!(log_ticks(3.0, 4.0), vec![2.0, 5.0]);
        assert_eq!(log_ticks(0.0, 0.0), vec![1.0, 2.0, 5.0, 10.0]);
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(0.05), "0.05");
        assert_eq!(tick_label(2.0), "2");
        assert_eq!(tick_label(1500.0), "1500");
        assert_eq!(tick_label(20_000.0), "20k");
        assert_eq!(tick_label(-0.0), "0");
    }

    #[test]
    fn a_gap_breaks_the_line() {
        let points = [(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (3.0, 3.0)];
        let usable = |p: &(f64, f64)| p.1.is_finite();
        let r = runs(&points, &usable);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].len(), r[1].len()), (1, 2));
    }

    #[test]
    fn render_draws_every_series_inside_the_plot_with_escaped_text() {
        let panels = [
            Panel {
                title: "CPU <per post>".into(),
                x_label: "minutes".into(),
                y_label: "ms".into(),
                series: vec![
                    Series::new("postgres", vec![(1.0, 0.06), (2.0, 0.07), (3.0, 0.065)]),
                    Series::new("api & co", vec![(1.0, 0.1), (2.0, 0.11), (3.0, 0.1)]),
                ],
                log_y: false,
            },
            Panel {
                title: "latency".into(),
                x_label: "minutes".into(),
                y_label: "ms".into(),
                series: vec![
                    Series::new("p99", vec![(1.0, 4.0), (2.0, 40.0), (3.0, 400.0)]),
                    Series::new("target", vec![(1.0, 25.0), (3.0, 25.0)]).dashed(),
                ],
                log_y: true,
            },
        ];
        let svg = render("soak", &panels);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("CPU &lt;per post&gt;") && svg.contains("api &amp; co"));
        assert!(!svg.contains("<per post>"));
        // Two axes frames plus four series lines.
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert_eq!(
            svg.matches("stroke-dasharray").count(),
            2,
            "the target line and its legend entry"
        );
        // Every plotted point lies inside its panel's plotting area.
        for line in svg.lines().filter(|l| l.starts_with("<circle")) {
            let attr = |name: &str| -> f64 {
                let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                line[start..].split('"').next().unwrap().parse().unwrap()
            };
            let (cx, cy) = (attr("cx"), attr("cy"));
            assert!((LEFT..=WIDTH - RIGHT).contains(&cx), "{line}");
            let panels_bottom = TITLE + 2.0 * (PANEL_TOP + PLOT_HEIGHT + PANEL_BOTTOM);
            assert!((TITLE + PANEL_TOP..=panels_bottom).contains(&cy), "{line}");
        }
    }
}
