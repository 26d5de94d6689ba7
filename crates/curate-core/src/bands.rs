//! Quality tags from aesthetic scores (oboro §IV-A4): a score falls in the
//! band whose lower edge is the highest one at or below it (lower edges
//! inclusive, upper edges exclusive); scores below the drop threshold are
//! dropped from training and get no tag.
//!
//! Defaults, from the report: `>= 6.0` "excellent score", `[5.2, 6.0)`
//! "good score", `[4.0, 5.2)` "average score", below 4.0 dropped.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bands {
    /// (lower edge, tag), highest edge first.
    pub bands: Vec<(f32, String)>,
    /// Scores strictly below this are dropped.
    pub drop_below: f32,
}

/// What a score becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tagged {
    pub tag: Option<String>,
    pub dropped: bool,
}

impl Default for Bands {
    fn default() -> Self {
        Bands {
            bands: vec![
                (6.0, "excellent score".into()),
                (5.2, "good score".into()),
                (4.0, "average score".into()),
            ],
            drop_below: 4.0,
        }
    }
}

impl Bands {
    /// Parses `6.0:"excellent score",5.2:good score,...` (quotes optional).
    pub fn parse(spec: &str, drop_below: f32) -> Result<Bands, String> {
        let mut bands = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (edge, tag) = part.split_once(':').ok_or_else(|| {
                format!("`{part}`: expected EDGE:TAG, e.g. 6.0:\"excellent score\"")
            })?;
            let edge: f32 = edge
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: `{}` is not a number", edge.trim()))?;
            let tag = tag.trim().trim_matches('"').trim_matches('\'').to_string();
            if tag.is_empty() {
                return Err(format!("`{part}`: empty tag"));
            }
            bands.push((edge, tag));
        }
        if bands.is_empty() {
            return Err("no bands given".into());
        }
        bands.sort_by(|a, b| b.0.total_cmp(&a.0));
        if let Some(w) = bands.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("two bands start at {}", w[0].0));
        }
        Ok(Bands { bands, drop_below })
    }

    /// The tag and drop decision for a score.
    pub fn tag(&self, score: f32) -> Tagged {
        if score < self.drop_below {
            return Tagged {
                tag: None,
                dropped: true,
            };
        }
        Tagged {
            tag: self
                .bands
                .iter()
                .find(|(edge, _)| score >= *edge)
                .map(|(_, t)| t.clone()),
            dropped: false,
        }
    }

    /// As stored in shard metadata: `[[6.0,"excellent score"],...]`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.bands).expect("plain data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn below(x: f32) -> f32 {
        f32::from_bits(x.to_bits() - 1)
    }

    #[test]
    fn edges_are_inclusive_below_and_exclusive_above() {
        let b = Bands::default();
        let t = |s: f32| b.tag(s);
        assert_eq!(t(6.0).tag.as_deref(), Some("excellent score"));
        assert_eq!(t(below(6.0)).tag.as_deref(), Some("good score"));
        assert_eq!(t(5.2).tag.as_deref(), Some("good score"));
        assert_eq!(t(below(5.2)).tag.as_deref(), Some("average score"));
        assert_eq!(t(4.0).tag.as_deref(), Some("average score"));
        assert!(!t(4.0).dropped);
        assert_eq!(
            t(below(4.0)),
            Tagged {
                tag: None,
                dropped: true
            }
        );
        assert_eq!(t(9.9).tag.as_deref(), Some("excellent score"));
    }

    #[test]
    fn parse_accepts_quotes_sorts_and_rejects_nonsense() {
        let b = Bands::parse("4.5:\"ok\", 7:'great',5.5:good", 4.5).unwrap();
        assert_eq!(
            b.bands,
            vec![
                (7.0, "great".to_string()),
                (5.5, "good".into()),
                (4.5, "ok".into())
            ]
        );
        assert_eq!(b.tag(5.49).tag.as_deref(), Some("ok"));
        assert!(b.tag(4.49).dropped);
        assert!(Bands::parse("six:great", 4.0)
            .unwrap_err()
            .contains("not a number"));
        assert!(Bands::parse("6.0", 4.0).unwrap_err().contains("EDGE:TAG"));
        assert!(Bands::parse("6:a,6:b", 4.0)
            .unwrap_err()
            .contains("two bands"));
    }

    #[test]
    fn a_gap_between_drop_and_lowest_band_is_untagged_not_dropped() {
        let b = Bands::parse("5:good", 3.0).unwrap();
        assert_eq!(
            b.tag(4.0),
            Tagged {
                tag: None,
                dropped: false
            }
        );
    }
}
