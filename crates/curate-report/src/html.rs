//! Page layout, escaping, number formatting and the shared stylesheet.
//! Pages are plain HTML with inline SVG; the one script (inline, a few
//! lines) records on `<body>` whether every image loaded and counts load
//! and script errors on `<html>`, so a headless browser can check a page.

use std::fmt::Write;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A number for a table: integers with separators, others with up to 4 significant decimals.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let s = thousands(v.abs() as u64);
        return if v < 0.0 { format!("-{s}") } else { s };
    }
    let a = v.abs();
    let decimals = if a >= 100.0 {
        1
    } else if a >= 1.0 {
        2
    } else if a >= 0.01 {
        4
    } else {
        6
    };
    format!("{v:.decimals$}")
}

/// An optional number, `–` when absent.
pub fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "–".into())
}

/// `part` of `whole` as a percentage.
pub fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".into()
    } else {
        format!("{:.1} %", 100.0 * part as f64 / whole as f64)
    }
}

/// Seconds as `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub fn duration(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "–".into();
    }
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{} h {:02} min",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// Bytes as `1.5 MB` (decimal units).
pub fn bytes(b: u64) -> String {
    let b = b as f64;
    if b < 1e3 {
        format!("{b} B")
    } else if b < 1e6 {
        format!("{:.1} kB", b / 1e3)
    } else if b < 1e9 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.2} GB", b / 1e9)
    }
}

/// A table: headers and rows of ready HTML cells; cells starting with a
/// digit, `-` followed by a digit, or `–` are right-aligned.
pub fn table(class: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!(r#"<table class="{class}"><thead><tr>"#);
    for h in headers {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let numeric = c.starts_with(|ch: char| ch.is_ascii_digit())
                || c.starts_with('–')
                || (c.starts_with('-') && c[1..].starts_with(|ch: char| ch.is_ascii_digit()));
            if numeric {
                let _ = write!(out, r#"<td class="n">{c}</td>"#);
            } else {
                let _ = write!(out, "<td>{c}</td>");
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A chart with its numbers in a table underneath.
pub fn figure(svg: &str, caption: &str, numbers: &str) -> String {
    format!(
        r#"<figure class="chartfig">{svg}<figcaption>{caption}</figcaption><details><summary>numbers</summary>{numbers}</details></figure>"#
    )
}

/// Key facts as a definition grid.
pub fn facts(items: &[(&str, String)]) -> String {
    let mut out = String::from(r#"<dl class="facts">"#);
    for (k, v) in items {
        let _ = write!(out, "<div><dt>{}</dt><dd>{v}</dd></div>", esc(k));
    }
    out.push_str("</dl>");
    out
}

/// One link of the navigation bar.
#[derive(Debug, Clone)]
pub struct NavItem {
    pub href: String,
    pub label: String,
}

const CHECK_SCRIPT: &str = "(function(){var d=document.documentElement;\
addEventListener('error',function(){d.setAttribute('data-errors',(+(d.getAttribute('data-errors')||0))+1)},true);\
addEventListener('load',function(){var im=document.images,ok=0;for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++}\
document.body.setAttribute('data-images-loaded',ok+'/'+im.length)})})();";

/// A whole page.
pub fn page(title: &str, nav: &[NavItem], current: &str, body: &str, generated: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · curate report</title><link rel="stylesheet" href="style.css">
<script>{CHECK_SCRIPT}</script></head>
<body><header><nav>"#,
        esc(title)
    );
    for item in nav {
        let here = item.href == current;
        let _ = write!(
            out,
            r#"<a href="{}"{}>{}</a>"#,
            esc(&item.href),
            if here { r#" aria-current="page""# } else { "" },
            esc(&item.label)
        );
    }
    let _ = write!(
        out,
        "</nav></header>\n<main>\n<h1>{}</h1>\n{body}\n</main>\n<footer>{}</footer>\n</body></html>\n",
        esc(title),
        generated
    );
    out
}

/// The stylesheet every page links.
pub const STYLE: &str = r#"body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#fafbfc}
header{background:#1d2430;padding:.4em 1em;position:sticky;top:0;z-index:1}
header nav a{color:#cfd8e3;text-decoration:none;margin-right:1.1em;white-space:nowrap}
header nav a[aria-current]{color:#fff;font-weight:600;border-bottom:2px solid #6fa8ff}
main{max-width:1180px;margin:0 auto;padding:0 1.2em 2em}
h1{font-size:1.5em;margin:.8em 0 .3em}h2{font-size:1.2em;margin:1.6em 0 .4em;border-bottom:1px solid #dde3ea}
a{color:#1f5fbf}
footer{color:#6b7684;font-size:.85em;text-align:center;padding:1em}
table{border-collapse:collapse;margin:.5em 0;background:#fff}
th,td{border:1px solid #dde3ea;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef2f6;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.hl td{background:#fff6d6}
.facts{display:flex;flex-wrap:wrap;gap:.6em;margin:.6em 0}
.facts div{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:.4em .8em;min-width:8em}
.facts dt{font-size:.8em;color:#6b7684}.facts dd{margin:0;font-size:1.15em;font-weight:600}
.note{color:#4b5563;max-width:60em}.warn{color:#9a3412}
figure.chartfig{display:inline-block;vertical-align:top;margin:.6em 1em .6em 0;background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:.5em}
figure.chartfig figcaption{max-width:520px;color:#4b5563;font-size:.9em}
figure.chartfig details{font-size:.9em}
svg.chart{width:520px;max-width:100%;height:auto;font-size:11px}
svg .ctitle{font-weight:600;font-size:12px;fill:#1d2430}
svg .tick,svg .alabel{fill:#4b5563}svg .alabel{font-size:11px}
svg .axis{stroke:#8a94a3}svg .grid{stroke:#eef1f4}
svg .bar{fill:#4a78b5}svg .bar:hover{fill:#2d5c99}
svg .s1{fill:#e08a3c}svg .s2{fill:#5aa469}svg .s3{fill:#9467bd}
svg .line{fill:none;stroke-width:1.5}svg .line.s0{stroke:#9fb7d8}svg .line.s1{stroke:#c0392b;stroke-width:2}svg .line.s2{stroke:#5aa469}
svg .dot{stroke:none}svg .dot.s0{fill:#4a78b5}svg .dot.s1{fill:#c0392b}
svg .legend .bar.s0{fill:#4a78b5}
svg .marker line{stroke:#c0392b;stroke-width:1.5;stroke-dasharray:4 3}svg .marker text{fill:#c0392b;font-size:11px}
.pager{margin:.8em 0;display:flex;flex-wrap:wrap;gap:.3em;align-items:center}
.pager a,.pager span{padding:.15em .55em;border:1px solid #dde3ea;border-radius:4px;background:#fff;text-decoration:none}
.pager span.cur{background:#1f5fbf;color:#fff;border-color:#1f5fbf}
.orders a[aria-current]{font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:0 1.2em;align-items:flex-start}.grid>section{flex:0 1 auto;min-width:0}.grid figure.chartfig{margin-right:0}
section.cluster{background:#fff;border:1px solid #dde3ea;border-radius:6px;margin:.8em 0;padding:.5em .8em}
section.cluster.chained{border-left:4px solid #d97706}
section.cluster h3{margin:.1em 0 .4em;font-size:1em}
.members{display:flex;flex-wrap:wrap;gap:.6em}
figure.member{margin:0;width:176px;font-size:.8em;border:1px solid #e5e9ef;border-radius:4px;padding:4px;background:#fcfcfd}
figure.member.kept{border:2px solid #15803d;background:#f0fdf4}
figure.member.below{background:#fff7ed}
figure.member .thumb{width:168px;height:168px;display:flex;align-items:center;justify-content:center;background:#f1f3f6}
figure.member img{max-width:168px;max-height:168px}
figure.member .missing{color:#9a3412;font-size:.9em;padding:.5em;text-align:center}
figure.member figcaption{word-break:break-all;margin-top:3px}
.badge{display:inline-block;padding:0 .4em;border-radius:3px;font-size:.85em;font-weight:600;background:#15803d;color:#fff}
.badge.chain{background:#d97706}
.cos{font-variant-numeric:tabular-nums;font-weight:600}
.gallery{display:flex;flex-wrap:wrap;gap:.6em}
"#;

/// The non-empty bins of a histogram as a table (`from`, `to`, `count_label`),
/// the bin edges with as many decimals as the bin width needs.
pub fn hist_table(h: &crate::stats::Histogram, count_label: &str) -> String {
    let step = h.width();
    let prec = if step >= 1.0 {
        0
    } else {
        ((-step.log10()).ceil() as usize + 1).min(6)
    };
    table(
        "hist",
        &["from", "to", count_label],
        &h.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| {
                let (a, b) = h.edges(i);
                vec![format!("{a:.prec$}"), format!("{b:.prec$}"), thousands(*c)]
            })
            .collect::<Vec<_>>(),
    )
}
