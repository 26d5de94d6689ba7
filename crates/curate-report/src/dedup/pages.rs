//! The cluster pages: one section per cluster with every member's
//! thumbnail, its cosine to the kept image and where it came from.

use std::collections::HashMap;
use std::fmt::Write;

use super::analysis::Cluster;
use super::members::Member;
use crate::html::{esc, thousands};
use crate::thumbs::Thumb;

/// File name of page `page` (1-based) of an order.
pub fn cluster_page(name: &str, order: &str, page: usize) -> String {
    format!("{name}-{order}-{page:03}.html")
}

/// The two orders of the cluster pages: file-name part and label.
pub const ORDERS: [(&str, &str); 2] = [
    ("by-size", "largest first"),
    (
        "by-min-cos",
        "lowest similarity first (chained clusters first)",
    ),
];

/// One page of an order, and what it draws on.
pub struct ClusterPage<'a> {
    pub name: &'a str,
    pub order: &'a str,
    pub label: &'a str,
    pub page: usize,
    pub pages: usize,
    pub first: usize,
    pub shown_total: usize,
    pub total: usize,
    pub chunk: &'a [Cluster],
    pub members: &'a HashMap<i64, Vec<Member>>,
    pub thumbs: &'a HashMap<String, Thumb>,
    pub eps: f32,
    pub max_members: usize,
    pub local_root: Option<&'a str>,
    pub overview: &'a str,
}

fn pager(p: &ClusterPage) -> String {
    let mut out = String::from(r#"<nav class="pager" aria-label="pages">"#);
    let link = |n: usize, text: &str| {
        format!(
            r#"<a href="{}">{text}</a>"#,
            cluster_page(p.name, p.order, n)
        )
    };
    if p.page > 1 {
        out.push_str(&link(p.page - 1, "‹ previous"));
    }
    let mut last_shown = 0;
    for n in 1..=p.pages {
        let near = n == 1 || n == p.pages || n.abs_diff(p.page) <= 3;
        if !near {
            continue;
        }
        if n > last_shown + 1 {
            out.push_str("<span>…</span>");
        }
        if n == p.page {
            let _ = write!(out, r#"<span class="cur">{n}</span>"#);
        } else {
            out.push_str(&link(n, &n.to_string()));
        }
        last_shown = n;
    }
    if p.page < p.pages {
        out.push_str(&link(p.page + 1, "next ›"));
    }
    out.push_str("</nav>");
    out
}

/// A path for a `file://` URL: characters that would end or alter it escaped.
fn file_href(root: &str, rel: &str) -> String {
    let full = format!("{}/{}", root.trim_end_matches('/'), rel);
    let mut out = String::from("file://");
    for c in full.chars() {
        match c {
            ' ' => out.push_str("%20"),
            '#' => out.push_str("%23"),
            '?' => out.push_str("%3F"),
            '%' => out.push_str("%25"),
            '"' => out.push_str("%22"),
            c => out.push(c),
        }
    }
    out
}

fn short_url(u: &str) -> String {
    let s = u
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    if s.chars().count() > 48 {
        let head: String = s.chars().take(22).collect();
        let tail: String = s
            .chars()
            .rev()
            .take(22)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("{head}…{tail}")
    } else {
        s.to_string()
    }
}

pub fn cluster_page_body(p: ClusterPage) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<p class="orders">Order: {} · <a href="{}">overview</a></p>"#,
        ORDERS
            .iter()
            .map(|(o, l)| {
                format!(
                    r#"<a href="{}"{}>{}</a>"#,
                    cluster_page(p.name, o, 1),
                    if *o == p.order {
                        r#" aria-current="true""#
                    } else {
                        ""
                    },
                    l
                )
            })
            .collect::<Vec<_>>()
            .join(" · "),
        p.overview
    );
    if p.chunk.is_empty() {
        out.push_str("<p>No clusters: dedup found no near-duplicates.</p>");
        return out;
    }
    let _ = write!(
        out,
        r#"<p class="note">Clusters {}–{} of {}{}, {}. Each shows every member: its thumbnail, the kept image marked, the cosine to the kept image (members below eps {} are shaded: they joined through a chain), where it came from.</p>"#,
        thousands(p.first as u64 + 1),
        thousands((p.first + p.chunk.len()) as u64),
        thousands(p.shown_total as u64),
        if p.total > p.shown_total {
            format!(" shown (of {})", thousands(p.total as u64))
        } else {
            String::new()
        },
        p.label,
        p.eps
    );
    out.push_str(&pager(&p));
    for c in p.chunk {
        let chained = (c.min_cos as f32) < p.eps;
        let _ = write!(
            out,
            r#"<section class="cluster{}" id="c{}" data-cluster-id="{}" data-size="{}" data-min-cos="{:.4}"><h3>Cluster {} · {} images · lowest cosine to the kept image {:.4}{}</h3><div class="members">"#,
            if chained { " chained" } else { "" },
            c.id,
            c.id,
            c.size,
            c.min_cos,
            c.id,
            c.size,
            c.min_cos,
            if chained {
                r#" <span class="badge chain">chained: below eps</span>"#
            } else {
                ""
            }
        );
        let empty = Vec::new();
        let ms = p.members.get(&c.id).unwrap_or(&empty);
        for m in ms.iter().take(p.max_members) {
            member(&mut out, m, &p);
        }
        out.push_str("</div>");
        if ms.len() > p.max_members {
            let _ = write!(
                out,
                r#"<p class="warn">… and {} more members not shown (--max-members {}).</p>"#,
                thousands((ms.len() - p.max_members) as u64),
                p.max_members
            );
        }
        out.push_str("</section>");
    }
    out.push_str(&pager(&p));
    out
}

fn member(out: &mut String, m: &Member, p: &ClusterPage) {
    let below = m.cos.is_some_and(|c| (c as f32) < p.eps);
    let _ = write!(
        out,
        r#"<figure class="member{}{}" data-key="{}" data-cos="{}"><div class="thumb">"#,
        if m.kept { " kept" } else { "" },
        if below { " below" } else { "" },
        esc(&m.key),
        m.cos.map(|c| format!("{c:.4}")).unwrap_or_default()
    );
    match p.thumbs.get(&m.key) {
        Some(Thumb::Ready {
            href,
            width,
            height,
        }) => {
            let _ = write!(
                out,
                r#"<img src="{}" width="{width}" height="{height}" alt="image {}">"#,
                esc(href),
                esc(&m.key)
            );
        }
        Some(Thumb::Missing(why)) => {
            let _ = write!(
                out,
                r#"<div class="missing">no thumbnail: {}</div>"#,
                esc(why)
            );
        }
        None => out.push_str(r#"<div class="missing">no images stage found</div>"#),
    }
    out.push_str("</div><figcaption>");
    if m.kept {
        out.push_str(r#"<span class="badge">kept</span> representative<br>"#);
    } else {
        let _ = write!(
            out,
            r#"cos <span class="cos">{}</span>{}<br>"#,
            m.cos.map(|c| format!("{c:.4}")).unwrap_or("–".into()),
            if below { " (below eps)" } else { "" }
        );
    }
    let round = m.round.map(|r| r.to_string()).unwrap_or("–".into());
    if m.kept {
        let _ = write!(out, "kept through round {round}");
    } else {
        let _ = write!(
            out,
            "removed in round {round} ({})",
            esc(m.role.as_deref().unwrap_or("–"))
        );
    }
    if let (Some(via), Some(rep)) = (&m.merged_into, &m.representative) {
        if via != rep {
            let _ = write!(out, " · via <code>{}</code>", esc(via));
        }
    }
    out.push_str("<br>");
    let url = m.url.as_deref().or_else(|| {
        m.source
            .as_deref()
            .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
    });
    match (url, &m.source) {
        (Some(u), _) => {
            let _ = write!(
                out,
                r#"<a href="{}" title="{}">{}</a>"#,
                esc(u),
                esc(u),
                esc(&short_url(u))
            );
            if let Some(pu) = &m.page_url {
                let _ = write!(out, r#" · <a href="{}">page</a>"#, esc(pu));
            }
        }
        (None, Some(src)) => match p.local_root {
            Some(root) => {
                let _ = write!(
                    out,
                    r#"<a href="{}">{}</a>"#,
                    esc(&file_href(root, src)),
                    esc(src)
                );
            }
            None => {
                let _ = write!(out, "{}", esc(src));
            }
        },
        (None, None) => out.push_str("source unknown"),
    }
    if let (Some(w), Some(h)) = (m.width, m.height) {
        let _ = write!(
            out,
            "<br>{w}×{h} {}",
            esc(m.format.as_deref().unwrap_or(""))
        );
    }
    let _ = write!(
        out,
        "<br><code>{}</code></figcaption></figure>",
        esc(&m.key)
    );
    let _ = m.cluster_id;
}
