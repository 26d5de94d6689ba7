//! Hand-written SVG charts: bars (categories), histograms (numeric bins with
//! marked thresholds), grouped bars and line charts. Every chart has a
//! `<title>` and `<desc>` (named by `aria-labelledby`), and every bar or
//! point a tooltip; the pages print the same numbers in a table.
//! Colours come from classes styled in `style.css`.

use std::fmt::Write;

use crate::html::esc;
use crate::stats::Histogram;

const W: f64 = 640.0;
const H: f64 = 280.0;
const ML: f64 = 64.0;
const MR: f64 = 20.0;
const MT: f64 = 34.0;
const MB: f64 = 52.0;

/// A vertical line at `x` with a label (a threshold, a band edge).
#[derive(Debug, Clone)]
pub struct Marker {
    pub x: f64,
    pub label: String,
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    /// CSS class: `s0`, `s1`, … (colours in style.css).
    pub class: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// Round tick positions covering `[lo, hi]`, about `n` of them.
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !lo.is_finite() || !hi.is_finite() || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let t = first + step * i as f64;
        if t > hi + step * 1e-9 {
            break;
        }
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        i += 1;
    }
    out
}

/// A tick label: as few decimals as the step needs.
pub fn tick_label(t: f64, step: f64) -> String {
    // The decimals the step needs (2.5 → 1, 0.02 → 2), trailing zeros dropped per label.
    let decimals = (0..=6usize)
        .find(|d| {
            let x = step * 10f64.powi(*d as i32);
            (x - x.round()).abs() < 1e-6 * x.abs().max(1.0)
        })
        .unwrap_or(6);
    if t.abs() >= 10_000.0 && decimals == 0 {
        return crate::html::thousands(t.round() as u64);
    }
    let s = format!("{t:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn open(out: &mut String, id: &str, title: &str, desc: &str) {
    let _ = write!(
        out,
        r#"<svg class="chart" id="{id}" role="img" aria-labelledby="{id}-t {id}-d" viewBox="0 0 {W} {H}" width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg"><title id="{id}-t">{}</title><desc id="{id}-d">{}</desc>"#,
        esc(title),
        esc(desc)
    );
    let _ = write!(
        out,
        r#"<text class="ctitle" x="{ML}" y="14">{}</text>"#,
        esc(title)
    );
}

fn y_axis(out: &mut String, ymax: f64, label: &str, pt: f64) -> impl Fn(f64) -> f64 {
    let ymax = if ymax > 0.0 { ymax } else { 1.0 };
    let ts = ticks(0.0, ymax, 5);
    let top = *ts.last().unwrap_or(&ymax);
    let top = if top < ymax { ymax } else { top };
    let y = move |v: f64| pt + (H - pt - MB) * (1.0 - v / top);
    let step = if ts.len() > 1 { ts[1] - ts[0] } else { 1.0 };
    for t in &ts {
        let yy = y(*t);
        let _ = write!(
            out,
            r#"<line class="grid" x1="{ML}" x2="{}" y1="{yy:.1}" y2="{yy:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - MR,
            ML - 6.0,
            yy + 4.0,
            tick_label(*t, step)
        );
    }
    let _ = write!(
        out,
        r#"<text class="alabel" transform="translate(14,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        pt + (H - pt - MB) / 2.0,
        esc(label)
    );
    let _ = write!(
        out,
        r#"<line class="axis" x1="{ML}" x2="{ML}" y1="{pt}" y2="{}"/><line class="axis" x1="{ML}" x2="{}" y1="{}" y2="{}"/>"#,
        H - MB,
        W - MR,
        H - MB,
        H - MB
    );
    y
}

fn x_label(out: &mut String, label: &str) {
    let _ = write!(
        out,
        r#"<text class="alabel" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
        ML + (W - ML - MR) / 2.0,
        H - 6.0,
        esc(label)
    );
}

/// A marker label's row, x and text anchor; `None` outside the axis.
type Placed = Option<(usize, f64, &'static str)>;

/// Where marker labels go: one row each above the plot, the first row
/// where the label overlaps no other. Returns per marker (row, x, anchor)
/// (`None` outside the axis) and the plot's top edge.
fn place_markers(ms: &[Marker], x: &dyn Fn(f64) -> f64, lo: f64, hi: f64) -> (Vec<Placed>, f64) {
    let mut rows: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut out = Vec::with_capacity(ms.len());
    for m in ms {
        if !(m.x >= lo && m.x <= hi) {
            out.push(None);
            continue;
        }
        let xx = x(m.x);
        let w = 6.2 * m.label.chars().count() as f64;
        let (a, b, tx, anchor) = if xx + 3.0 + w <= W - MR {
            (xx, xx + 3.0 + w, xx + 3.0, "start")
        } else {
            (xx - 3.0 - w, xx, xx - 3.0, "end")
        };
        let row = rows
            .iter()
            .position(|r| r.iter().all(|(c, d)| b + 6.0 < *c || a > *d + 6.0))
            .unwrap_or_else(|| {
                rows.push(Vec::new());
                rows.len() - 1
            });
        rows[row].push((a, b));
        out.push(Some((row, tx, anchor)));
    }
    let pt = if rows.is_empty() {
        MT
    } else {
        26.0 + 12.0 * rows.len() as f64 + 4.0
    };
    (out, pt.max(MT))
}

fn markers(out: &mut String, ms: &[Marker], x: &dyn Fn(f64) -> f64, placed: &[Placed]) {
    for (m, p) in ms.iter().zip(placed) {
        let Some((row, tx, anchor)) = p else { continue };
        let xx = x(m.x);
        let ty = 28.0 + 12.0 * *row as f64;
        let _ = write!(
            out,
            r#"<g class="marker"><line x1="{xx:.1}" x2="{xx:.1}" y1="{:.1}" y2="{}"><title>{}</title></line><text x="{tx:.1}" y="{ty:.1}" text-anchor="{anchor}">{}</text></g>"#,
            ty - 8.0,
            H - MB,
            esc(&m.label),
            esc(&m.label)
        );
    }
}

/// Bars for categories: `(label, value)`.
pub fn bars(id: &str, title: &str, x_name: &str, y_name: &str, data: &[(String, f64)]) -> String {
    let mut out = String::new();
    let desc = format!(
        "Bar chart of {y_name} by {x_name}: {}",
        data.iter()
            .take(12)
            .map(|(l, v)| format!("{l} {}", crate::html::num(*v)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    open(&mut out, id, title, &desc);
    let ymax = data.iter().map(|d| d.1).fold(0.0, f64::max);
    let y = y_axis(&mut out, ymax, y_name, MT);
    let n = data.len().max(1) as f64;
    let slot = (W - ML - MR) / n;
    let bw = (slot * 0.75).max(1.0);
    let rotate = data.len() > 8 || data.iter().any(|d| d.0.chars().count() as f64 * 6.5 > slot);
    for (i, (label, v)) in data.iter().enumerate() {
        let x0 = ML + slot * i as f64 + (slot - bw) / 2.0;
        let y0 = y(*v);
        let _ = write!(
            out,
            r#"<rect class="bar" x="{x0:.1}" y="{y0:.1}" width="{bw:.1}" height="{:.1}"><title>{}: {}</title></rect>"#,
            (H - MB - y0).max(0.0),
            esc(label),
            crate::html::num(*v)
        );
        let cx = x0 + bw / 2.0;
        let short: String = if label.chars().count() > 18 {
            label.chars().take(17).chain(['…']).collect()
        } else {
            label.clone()
        };
        if rotate {
            let _ = write!(
                out,
                r#"<text class="tick" transform="translate({cx:.1},{}) rotate(-35)" text-anchor="end">{}</text>"#,
                H - MB + 12.0,
                esc(&short)
            );
        } else {
            let _ = write!(
                out,
                r#"<text class="tick" x="{cx:.1}" y="{}" text-anchor="middle">{}</text>"#,
                H - MB + 14.0,
                esc(&short)
            );
        }
    }
    if !rotate {
        x_label(&mut out, x_name);
    }
    out.push_str("</svg>");
    out
}

/// Grouped bars: one group per category, one bar per series.
pub fn grouped_bars(
    id: &str,
    title: &str,
    x_name: &str,
    y_name: &str,
    categories: &[String],
    series: &[(&str, Vec<f64>)],
) -> String {
    let mut out = String::new();
    let desc = format!(
        "Grouped bar chart of {y_name} by {x_name}, series {}",
        series.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
    );
    open(&mut out, id, title, &desc);
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(0.0, f64::max);
    let y = y_axis(&mut out, ymax, y_name, MT);
    let n = categories.len().max(1) as f64;
    let slot = (W - ML - MR) / n;
    let group = slot * 0.8;
    let bw = (group / series.len().max(1) as f64).max(1.0);
    for (i, cat) in categories.iter().enumerate() {
        for (j, (name, values)) in series.iter().enumerate() {
            let v = values.get(i).copied().unwrap_or(0.0);
            let x0 = ML + slot * i as f64 + (slot - group) / 2.0 + bw * j as f64;
            let y0 = y(v);
            let _ = write!(
                out,
                r#"<rect class="bar s{j}" x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}"><title>{} {}: {}</title></rect>"#,
                (bw - 1.0).max(1.0),
                (H - MB - y0).max(0.0),
                esc(cat),
                esc(name),
                crate::html::num(v)
            );
        }
        let _ = write!(
            out,
            r#"<text class="tick" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            ML + slot * (i as f64 + 0.5),
            H - MB + 14.0,
            esc(cat)
        );
    }
    legend(
        &mut out,
        &series
            .iter()
            .enumerate()
            .map(|(j, s)| (format!("s{j}"), s.0.to_string()))
            .collect::<Vec<_>>(),
        Key::Bar,
    );
    x_label(&mut out, x_name);
    out.push_str("</svg>");
    out
}

/// How a legend shows its series: a square of the bar's fill, or a stroke
/// of the line's. The key carries the series' own classes, so it takes its
/// colour from the same CSS rule as what it names.
#[derive(Clone, Copy)]
enum Key {
    Bar,
    Line,
}

fn legend(out: &mut String, items: &[(String, String)], key: Key) {
    let mut x = W - MR;
    for (class, name) in items.iter().rev() {
        let w = 16.0 + 6.5 * name.chars().count() as f64;
        x -= w + 8.0;
        let _ = match key {
            Key::Bar => write!(
                out,
                r#"<g class="legend"><rect class="bar {class}" x="{x:.1}" y="4" width="10" height="10"/>"#
            ),
            Key::Line => write!(
                out,
                r#"<g class="legend"><path class="line {class}" d="M{x:.1},9H{:.1}"/>"#,
                x + 10.0
            ),
        };
        let _ = write!(
            out,
            r#"<text class="tick" x="{:.1}" y="13">{}</text></g>"#,
            x + 14.0,
            esc(name)
        );
    }
}

/// A histogram with vertical markers (thresholds, band edges).
pub fn histogram(
    id: &str,
    title: &str,
    x_name: &str,
    y_name: &str,
    h: &Histogram,
    marks: &[Marker],
) -> String {
    let mut out = String::new();
    let desc = format!(
        "Histogram of {x_name} ({y_name}): {} values in {} bins from {} to {}{}",
        h.total(),
        h.counts.len(),
        crate::html::num(h.lo),
        crate::html::num(h.hi),
        if marks.is_empty() {
            String::new()
        } else {
            format!(
                "; marked: {}",
                marks
                    .iter()
                    .map(|m| m.label.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    open(&mut out, id, title, &desc);
    let ymax = h.counts.iter().copied().max().unwrap_or(0) as f64;
    let x = |v: f64| ML + (W - ML - MR) * (v - h.lo) / (h.hi - h.lo);
    let (placed, pt) = place_markers(marks, &x, h.lo, h.hi);
    let y = y_axis(&mut out, ymax, y_name, pt);
    let bw = (W - ML - MR) / h.counts.len().max(1) as f64;
    let step = h.width();
    let prec = if step >= 1.0 {
        0
    } else {
        ((-step.log10()).ceil() as usize + 1).min(6)
    };
    for (i, c) in h.counts.iter().enumerate() {
        let (a, b) = h.edges(i);
        let y0 = y(*c as f64);
        let _ = write!(
            out,
            r#"<rect class="bar" x="{:.2}" y="{y0:.1}" width="{:.2}" height="{:.1}"><title>[{a:.prec$}, {b:.prec$}): {c}</title></rect>"#,
            x(a) + 0.5,
            (bw - 1.0).max(0.5),
            (H - MB - y0).max(0.0),
        );
    }
    let ts = ticks(h.lo, h.hi, 8);
    let tstep = if ts.len() > 1 { ts[1] - ts[0] } else { 1.0 };
    for t in &ts {
        let xx = x(*t);
        let _ = write!(
            out,
            r#"<line class="axis" x1="{xx:.1}" x2="{xx:.1}" y1="{}" y2="{}"/><text class="tick" x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"#,
            H - MB,
            H - MB + 4.0,
            H - MB + 16.0,
            tick_label(*t, tstep)
        );
    }
    markers(&mut out, marks, &x, &placed);
    x_label(&mut out, x_name);
    out.push_str("</svg>");
    out
}

/// Lines over a numeric x axis (a loss curve); long series are thinned to
/// at most 1,500 points by keeping each stretch's first, lowest and highest.
pub fn lines(
    id: &str,
    title: &str,
    x_name: &str,
    y_name: &str,
    series: &[Line],
    marks: &[Marker],
) -> String {
    let mut out = String::new();
    let desc = format!(
        "Line chart of {y_name} against {x_name}: {}",
        series
            .iter()
            .map(|s| format!("{} ({} points)", s.name, s.points.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    open(&mut out, id, title, &desc);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (xlo, xhi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.0), b.max(p.0))
    });
    let ymax = all().map(|p| p.1).fold(0.0, f64::max);
    let ymin = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let (xlo, xhi) = if xlo.is_finite() && xhi > xlo {
        (xlo, xhi)
    } else {
        (xlo.min(0.0), xlo.max(0.0) + 1.0)
    };
    // Loss curves are positive: the axis starts at 0 unless values are negative.
    let ylo = if ymin < 0.0 { ymin } else { 0.0 };
    let yts = ticks(ylo, ymax.max(ylo + 1e-12), 5);
    let ytop = yts.last().copied().unwrap_or(ymax).max(ymax);
    let x = |v: f64| ML + (W - ML - MR) * (v - xlo) / (xhi - xlo);
    let (placed, pt) = place_markers(marks, &x, xlo, xhi);
    let y = |v: f64| pt + (H - pt - MB) * (1.0 - (v - ylo) / (ytop - ylo).max(1e-12));
    let ystep = if yts.len() > 1 { yts[1] - yts[0] } else { 1.0 };
    for t in &yts {
        let yy = y(*t);
        let _ = write!(
            out,
            r#"<line class="grid" x1="{ML}" x2="{}" y1="{yy:.1}" y2="{yy:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - MR,
            ML - 6.0,
            yy + 4.0,
            tick_label(*t, ystep)
        );
    }
    let _ = write!(
        out,
        r#"<text class="alabel" transform="translate(14,{:.1}) rotate(-90)" text-anchor="middle">{}</text><line class="axis" x1="{ML}" x2="{ML}" y1="{pt}" y2="{}"/><line class="axis" x1="{ML}" x2="{}" y1="{}" y2="{}"/>"#,
        pt + (H - pt - MB) / 2.0,
        esc(y_name),
        H - MB,
        W - MR,
        H - MB,
        H - MB
    );
    let xts = ticks(xlo, xhi, 8);
    let xstep = if xts.len() > 1 { xts[1] - xts[0] } else { 1.0 };
    for t in &xts {
        let xx = x(*t);
        let _ = write!(
            out,
            r#"<line class="axis" x1="{xx:.1}" x2="{xx:.1}" y1="{}" y2="{}"/><text class="tick" x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"#,
            H - MB,
            H - MB + 4.0,
            H - MB + 16.0,
            tick_label(*t, xstep)
        );
    }
    for s in series {
        let pts = thin(&s.points, 1500);
        let mut d = String::new();
        for (i, (px, py)) in pts.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { " L" },
                x(*px),
                y(*py)
            );
        }
        let _ = write!(
            out,
            r#"<path class="line {}" d="{d}"><title>{}</title></path>"#,
            s.class,
            esc(&s.name)
        );
        if pts.len() <= 60 {
            for (px, py) in &pts {
                let _ = write!(
                    out,
                    r#"<circle class="dot {}" cx="{:.1}" cy="{:.1}" r="2.5"><title>{} at {}: {}</title></circle>"#,
                    s.class,
                    x(*px),
                    y(*py),
                    esc(&s.name),
                    crate::html::num(*px),
                    crate::html::num(*py)
                );
            }
        }
    }
    markers(&mut out, marks, &x, &placed);
    legend(
        &mut out,
        &series
            .iter()
            .map(|s| (s.class.to_string(), s.name.clone()))
            .collect::<Vec<_>>(),
        Key::Line,
    );
    x_label(&mut out, x_name);
    out.push_str("</svg>");
    out
}

/// At most about `max` points: each stretch keeps its first, lowest and highest point.
fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let stretch = points.len().div_ceil(max / 3);
    let mut out = Vec::with_capacity(max + 3);
    for chunk in points.chunks(stretch) {
        let lo = chunk
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("non-empty");
        let hi = chunk
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("non-empty");
        let mut three = [chunk[0], *lo, *hi];
        three.sort_by(|a, b| a.0.total_cmp(&b.0));
        for p in three {
            if out.last() != Some(&p) {
                out.push(p);
            }
        }
    }
    if let Some(last) = points.last() {
        if out.last() != Some(last) {
            out.push(*last);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(0.0, 7.0, 5), vec![0.0, 2.0, 4.0, 6.0]);
        let t = ticks(0.9, 1.0, 5);
        assert!((t[0] - 0.9).abs() < 1e-9 && (t.last().unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(tick_label(0.95, 0.02), "0.95");
        assert_eq!(tick_label(7.5, 2.5), "7.5");
        assert_eq!(tick_label(5.0, 2.5), "5");
        assert_eq!(tick_label(0.9, 0.01), "0.9");
        assert_eq!(tick_label(12000.0, 2000.0), "12,000");
    }

    /// The loss chart's legend once showed an orange square for a red line:
    /// each line's key is now a stroke with the line's own classes, and the
    /// stylesheet colours `.line.sN` with no rule that tells a legend's apart.
    #[test]
    fn a_line_legend_key_has_the_classes_of_its_line() {
        let series: Vec<Line> = ["loss (raw)", "loss (EMA)", "validation"]
            .iter()
            .zip(["s0", "s1", "s2"])
            .map(|(name, class)| Line {
                name: name.to_string(),
                class,
                points: vec![(1.0, 2.0), (2.0, 1.5), (3.0, 1.2)],
            })
            .collect();
        let svg = lines("loss", "Loss", "step", "loss", &series, &[]);
        for l in &series {
            let path = format!(r#"<path class="line {}" d="M"#, l.class);
            assert!(svg.contains(&path), "no line {} in {svg}", l.class);
            let key = format!(r#"<g class="legend"><path class="line {}" "#, l.class);
            let at = svg
                .find(&key)
                .unwrap_or_else(|| panic!("no key {key} in {svg}"));
            let text = &svg[at..svg[at..].find("</g>").unwrap() + at];
            assert!(text.contains(&esc(&l.name)), "{text}");
        }
        let css = crate::html::STYLE;
        assert!(!css.contains(".legend .line"), "a legend-only line rule");
        for class in ["s0", "s1", "s2"] {
            assert!(
                css.contains(&format!("svg .line.{class}{{stroke:")),
                "{class}"
            );
        }
    }

    #[test]
    fn charts_are_labelled_svg_with_a_tooltip_per_bar() {
        let s = bars(
            "c1",
            "Outcomes",
            "reason",
            "images",
            &[("ok".into(), 30.0), ("truncated".into(), 2.0)],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains(r#"aria-labelledby="c1-t c1-d""#));
        assert!(s.contains("<title id=\"c1-t\">Outcomes</title>"));
        assert_eq!(s.matches("<rect class=\"bar\"").count(), 2);
        assert!(s.contains("<title>truncated: 2</title>"));

        let h = Histogram {
            lo: 0.0,
            hi: 1.0,
            counts: vec![1, 0, 3, 4],
        };
        let s = histogram(
            "c2",
            "Cosine",
            "cos",
            "images",
            &h,
            &[Marker {
                x: 0.9,
                label: "eps 0.9".into(),
            }],
        );
        assert_eq!(s.matches("<rect class=\"bar\"").count(), 4);
        assert!(s.contains("class=\"marker\"") && s.contains("eps 0.9"));
    }

    #[test]
    fn thinning_keeps_extremes_and_ends() {
        let pts: Vec<(f64, f64)> = (0..10_000)
            .map(|i| (i as f64, if i == 5_000 { 100.0 } else { 1.0 }))
            .collect();
        let t = thin(&pts, 1500);
        assert!(t.len() <= 1510, "{}", t.len());
        assert!(t.contains(&(5000.0, 100.0)));
        assert_eq!(t.first(), pts.first());
        assert_eq!(t.last(), pts.last());
    }
}
