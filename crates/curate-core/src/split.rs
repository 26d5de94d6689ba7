//! Which shards this process owns.
//!
//! A stage's output shards are numbered `0..n`. Process `index` of `count`
//! owns shard `s` when `s % count == index`, so an array job of `count`
//! tasks covers every shard exactly once whatever the shard count.

use crate::CoreError;

/// This process's part of the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSplit {
    pub index: u32,
    pub count: u32,
}

impl Default for ShardSplit {
    fn default() -> Self {
        ShardSplit { index: 0, count: 1 }
    }
}

impl ShardSplit {
    pub fn new(index: u32, count: u32) -> Result<Self, CoreError> {
        if count == 0 {
            return Err(CoreError::Split {
                message: "--num-tasks must be at least 1".into(),
            });
        }
        if index >= count {
            return Err(CoreError::Split {
                message: format!("--task-index {index} is not below --num-tasks {count}"),
            });
        }
        Ok(ShardSplit { index, count })
    }

    /// Resolves the split from explicit flags, falling back to the Slurm
    /// array variables read through `env`: `SLURM_ARRAY_TASK_ID`,
    /// `SLURM_ARRAY_TASK_COUNT` and `SLURM_ARRAY_TASK_MIN` (an array
    /// `--array=1-8` has ids 1..8, so the index is `id - min`).
    pub fn resolve(
        index: Option<u32>,
        count: Option<u32>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CoreError> {
        let var = |name: &str| -> Result<Option<u32>, CoreError> {
            match env(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| CoreError::Split {
                    message: format!("{name}={v:?} is not a non-negative integer"),
                }),
            }
        };
        let count = match count {
            Some(c) => c,
            None => var("SLURM_ARRAY_TASK_COUNT")?.unwrap_or(1),
        };
        let index = match index {
            Some(i) => i,
            None => match var("SLURM_ARRAY_TASK_ID")? {
                Some(id) => {
                    let min = var("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
                    id.checked_sub(min).ok_or_else(|| CoreError::Split {
                        message: format!(
                            "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
                        ),
                    })?
                }
                None => 0,
            },
        };
        Self::new(index, count)
    }

    /// From the flags and the process environment.
    pub fn from_env(index: Option<u32>, count: Option<u32>) -> Result<Self, CoreError> {
        Self::resolve(index, count, |k| std::env::var(k).ok())
    }

    pub fn owns(&self, shard: u32) -> bool {
        shard % self.count == self.index
    }

    /// The shards of `0..total` this process owns.
    pub fn owned(&self, total: u32) -> impl Iterator<Item = u32> + '_ {
        (self.index..total).step_by(self.count as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn flags_win_over_slurm() {
        let s = ShardSplit::resolve(
            Some(1),
            Some(3),
            env(&[
                ("SLURM_ARRAY_TASK_ID", "0"),
                ("SLURM_ARRAY_TASK_COUNT", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(s, ShardSplit { index: 1, count: 3 });
    }

    #[test]
    fn slurm_array_not_starting_at_zero() {
        let s = ShardSplit::resolve(
            None,
            None,
            env(&[
                ("SLURM_ARRAY_TASK_ID", "7"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
                ("SLURM_ARRAY_TASK_MIN", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(s, ShardSplit { index: 2, count: 4 });
    }

    #[test]
    fn defaults_to_everything() {
        assert_eq!(
            ShardSplit::resolve(None, None, env(&[])).unwrap(),
            ShardSplit::default()
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(ShardSplit::resolve(Some(3), Some(3), env(&[])).is_err());
        assert!(ShardSplit::resolve(None, Some(0), env(&[])).is_err());
        let e = ShardSplit::resolve(None, None, env(&[("SLURM_ARRAY_TASK_ID", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("SLURM_ARRAY_TASK_ID"), "{e}");
        assert!(ShardSplit::resolve(
            None,
            None,
            env(&[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_MIN", "2")])
        )
        .is_err());
    }

    #[test]
    fn tasks_partition_the_shards() {
        for count in 1..6u32 {
            let mut seen = vec![0u32; 23];
            for index in 0..count {
                let s = ShardSplit::new(index, count).unwrap();
                for shard in s.owned(23) {
                    assert!(s.owns(shard));
                    seen[shard as usize] += 1;
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "count {count}: {seen:?}");
        }
    }
}
