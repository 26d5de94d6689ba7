//! The `url_list` table (schemas/url_list.json): the URL lists `curate
//! fetch` reads. Curate never writes it. A list is either a parquet file
//! (Megalith-10m: `url`, `url_highres`, `url_source`; the URL and page
//! columns are chosen by name, any string-castable type) or a text file
//! with one URL per line (blank lines and `#` comments skipped).

use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::Array;
use curate_core::schema::{self, TableSchema};
use parquet::arrow::ProjectionMask;

use crate::IoError;

/// The `url_list` table schema.
pub fn table() -> &'static TableSchema {
    schema::get("url_list").expect("url_list schema is compiled in")
}

/// One listed photo: its URL and, when the list has one, its page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlRow {
    pub url: String,
    pub page: Option<String>,
}

/// One list file and its row count.
#[derive(Debug, Clone)]
pub struct ListFile {
    pub path: PathBuf,
    pub rows: u64,
    /// A parquet file (by its extension); a text list otherwise.
    pub parquet: bool,
}

impl ListFile {
    /// Opens a list: a parquet file's rows come from its footer; a text
    /// list is read to count its URLs.
    pub fn open(path: &Path) -> Result<ListFile, IoError> {
        let parquet = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
        let rows = if parquet {
            crate::row_count(path)?
        } else {
            read_text(path)?.len() as u64
        };
        Ok(ListFile {
            path: path.to_path_buf(),
            rows,
            parquet,
        })
    }

    /// Its rows in order. A parquet list must have `url_col` (the error
    /// names the columns it has); `page_col` is read when present. A null
    /// URL reads as empty.
    pub fn read(&self, url_col: &str, page_col: &str) -> Result<Vec<UrlRow>, IoError> {
        if !self.parquet {
            return Ok(read_text(&self.path)?
                .into_iter()
                .map(|url| UrlRow { url, page: None })
                .collect());
        }
        let cols = match read_utf8_columns(&self.path, &[url_col, page_col]) {
            Ok(c) => c,
            Err(IoError::MissingInputColumn { column, .. }) if column == page_col => {
                read_utf8_columns(&self.path, &[url_col])?
            }
            Err(e) => return Err(e),
        };
        let mut cols = cols.into_iter();
        let urls = cols.next().unwrap_or_default();
        let pages = cols.next().unwrap_or_else(|| vec![None; urls.len()]);
        Ok(urls
            .into_iter()
            .zip(pages)
            .map(|(u, page)| UrlRow {
                url: u.unwrap_or_default(),
                page,
            })
            .collect())
    }
}

/// The URLs of a text list: one per line, trimmed; blank lines and `#` comments skipped.
pub fn read_text(path: &Path) -> Result<Vec<String>, IoError> {
    let text = std::fs::read_to_string(path).map_err(|e| IoError::Invalid {
        what: format!("reading URL list {}: {e}", path.display()),
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Named columns of a parquet list as strings, without checking the file
/// against a curate schema (lists carry other columns). A missing column
/// is an error naming the columns the file has.
fn read_utf8_columns(path: &Path, columns: &[&str]) -> Result<Vec<Vec<Option<String>>>, IoError> {
    let builder = crate::open(path)?;
    let mut idx = Vec::with_capacity(columns.len());
    for c in columns {
        idx.push(builder.schema().index_of(c).map_err(|_| {
            IoError::MissingInputColumn {
                path: path.to_path_buf(),
                column: c.to_string(),
                found: builder
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })?);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), idx.clone());
    let projected = builder
        .schema()
        .project(&idx)
        .map_err(|source| IoError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|source| IoError::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    let mut out: Vec<Vec<Option<String>>> = vec![Vec::new(); columns.len()];
    for batch in reader {
        let batch = batch.map_err(|source| IoError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        for (i, name) in columns.iter().enumerate() {
            let col = batch
                .column_by_name(name)
                .or_else(|| projected.index_of(name).ok().map(|j| batch.column(j)))
                .ok_or_else(|| IoError::MissingColumn {
                    path: path.to_path_buf(),
                    column: name.to_string(),
                })?;
            let strings =
                arrow_cast::cast(col, &arrow_schema::DataType::Utf8).map_err(|source| {
                    IoError::Arrow {
                        path: path.to_path_buf(),
                        source,
                    }
                })?;
            let strings = strings.as_string::<i32>();
            out[i].extend(
                (0..strings.len())
                    .map(|r| strings.is_valid(r).then(|| strings.value(r).to_string())),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_list_skips_blank_lines_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("urls.txt");
        std::fs::write(&path, "# header\nhttp://a/1.jpg\n\n  http://a/2.jpg  \n").unwrap();
        let list = ListFile::open(&path).unwrap();
        assert_eq!((list.rows, list.parquet), (2, false));
        let rows = list.read("url", "url_source").unwrap();
        assert_eq!(
            rows,
            vec![
                UrlRow {
                    url: "http://a/1.jpg".into(),
                    page: None
                },
                UrlRow {
                    url: "http://a/2.jpg".into(),
                    page: None
                },
            ]
        );
    }

    #[test]
    fn the_table_is_compiled_in() {
        assert_eq!(table().name, "url_list");
    }
}
