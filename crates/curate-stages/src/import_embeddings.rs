//! `import-embeddings`: embeddings made by another tool as an `embeddings` stage.
//!
//! Two inputs are read:
//!
//! - a parquet file, or a folder of `*.parquet` files: a key column and an
//!   embedding column (list, large_list or fixed_size_list of
//!   float16/32/64);
//! - a clip-retrieval output folder: `img_emb/img_emb_N.npy` (2-D float16 or
//!   float32, rows in metadata order) with `metadata/metadata_N.parquet`
//!   (the key column; `key` when it has one, else `image_path`).
//!
//! One output shard per input file (or npy/metadata pair), the same table
//! and metadata `embed` writes, so `dedup` reads it as it reads `embed`'s.
//! Before anything is written every key column is read once: keys must be
//! unique over the whole input (a collision names both rows). Vectors are
//! L2-normalised; a null, zero or non-finite vector is an error row
//! (`invalid_embedding`) and the shard goes on; a vector of another width
//! stops the stage.

pub mod npy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow_schema::SchemaRef;
use curate_core::hash::Fingerprint;
use curate_core::schema::TableSchema;
use curate_core::stage::{Inputs, ShardRecord, StageSpec};
use curate_io::embeddings::{self, Dtype, EmbeddingsMeta};
use curate_io::scan::guarded;
use curate_io::status::Outcome;
use curate_stage::{bail, Context, Result, ShardOutput, Stage, StageError};
use polars::prelude::{
    col, DataType as PlType, LazyFrame, PlRefPath, PolarsResult, ScanArgsParquet,
};

use self::npy::Npy;
use crate::embed::l2_normalise;

/// Rows read and written at a time.
const CHUNK: usize = 4096;

/// The `output` metadata of imported embeddings (embed records its ONNX tensor there).
pub const OUTPUT: &str = "imported";

/// The failure reason of a null, zero or non-finite vector.
pub const INVALID: &str = "invalid_embedding";

/// Vectors of a chunk as f32, `None` where the row has no vector.
type Vectors = Vec<Option<Vec<f32>>>;

/// What `curate import-embeddings` is asked to do.
#[derive(Debug, Clone)]
pub struct ImportEmbeddingsSettings {
    /// A parquet file, a folder of them, or a clip-retrieval output folder.
    pub input: PathBuf,
    /// Key column [default: `key`; clip-retrieval: `key` when the metadata has it, else `image_path`].
    pub key_col: Option<String>,
    /// Embedding column of a parquet input.
    pub embedding_col: String,
    /// Model id stored with every row [default: `imported:<input name>`].
    pub model_id: Option<String>,
    pub dtype: Dtype,
    /// The dimension every vector must have.
    pub dim: Option<usize>,
}

/// How the input is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Parquet,
    ClipRetrieval,
}

impl Layout {
    fn as_str(self) -> &'static str {
        match self {
            Layout::Parquet => "parquet",
            Layout::ClipRetrieval => "clip-retrieval",
        }
    }
}

/// One input file (or npy/metadata pair): one output shard.
#[derive(Debug, Clone)]
struct Source {
    /// The parquet file holding the keys (and, for a parquet input, the vectors).
    table: PathBuf,
    /// The vectors of a clip-retrieval input.
    npy: Option<Npy>,
    rows: u64,
    /// Its name under the input root (journal, manifest).
    name: String,
}

impl Source {
    fn label(&self) -> String {
        match &self.npy {
            Some(n) => format!("{} + {}", n.path.display(), self.table.display()),
            None => self.table.display().to_string(),
        }
    }
}

/// The `import-embeddings` stage, its input listed and checked.
pub struct ImportEmbeddings {
    root: PathBuf,
    layout: Layout,
    sources: Vec<Source>,
    key_col: String,
    embedding_col: String,
    meta: EmbeddingsMeta,
    schema: SchemaRef,
    /// Where the dimension was taken from (for a mismatch's message).
    dim_from: String,
}

fn scan(path: &Path) -> Result<LazyFrame> {
    let what = format!("reading {}", path.display());
    Ok(guarded(&what, || {
        let p = PlRefPath::try_from_path(path)?;
        LazyFrame::scan_parquet(
            p,
            ScanArgsParquet {
                glob: false,
                cache: false,
                ..Default::default()
            },
        )
    })?)
}

/// Column names and types of a parquet file.
fn columns(path: &Path) -> Result<Vec<(String, PlType)>> {
    let mut lf = scan(path)?;
    let schema = guarded(&format!("reading the schema of {}", path.display()), || {
        lf.collect_schema()
    })?;
    Ok(schema
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect())
}

fn names(cols: &[(String, PlType)]) -> String {
    cols.iter()
        .map(|(n, t)| format!("{n} ({t})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn find<'a>(cols: &'a [(String, PlType)], name: &str) -> Option<&'a PlType> {
    cols.iter().find(|(n, _)| n == name).map(|(_, t)| t)
}

/// Checks the key column's type: text, or integers (read as their decimal text).
fn check_key(path: &Path, cols: &[(String, PlType)], key: &str, flag: &str) -> Result<()> {
    match find(cols, key) {
        None => bail!(
            "{}: no key column `{key}` ({flag}); the file has: {}",
            path.display(),
            names(cols)
        ),
        Some(PlType::String) => Ok(()),
        Some(t) if t.is_integer() => Ok(()),
        Some(t) => bail!(
            "{}: key column `{key}` has type {t}, expected text (utf8) or integers",
            path.display()
        ),
    }
}

/// Checks the embedding column's type; `Some(dim)` for a fixed-size list.
fn check_embedding(path: &Path, cols: &[(String, PlType)], name: &str) -> Result<Option<usize>> {
    let float = |t: &PlType| matches!(t, PlType::Float16 | PlType::Float32 | PlType::Float64);
    match find(cols, name) {
        None => bail!(
            "{}: no embedding column `{name}` (--embedding-col); the file has: {}",
            path.display(),
            names(cols)
        ),
        Some(PlType::List(inner)) if float(inner.as_ref()) => Ok(None),
        Some(PlType::Array(inner, d)) if float(inner.as_ref()) => {
            if *d == 0 {
                bail!("{}: embedding column `{name}` has width 0", path.display());
            }
            Ok(Some(*d))
        }
        Some(t) => bail!(
            "{}: embedding column `{name}` has type {t}, expected a list, large_list or \
             fixed_size_list of float16, float32 or float64",
            path.display()
        ),
    }
}

/// The parquet files of a folder (not its subfolders), by name.
fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// `prefix_N.ext` files of `dir` by N.
fn numbered(dir: &Path, prefix: &str, ext: &str) -> Result<Vec<(u64, PathBuf)>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let n = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(ext))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            out.push((n, p));
        }
    }
    out.sort();
    Ok(out)
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .ok()
        .filter(|r| !r.as_os_str().is_empty())
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// What a folder holds, for the "neither layout" message.
fn listing(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if e.path().is_dir() {
                        format!("{n}/")
                    } else {
                        n
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let more = names.len().saturating_sub(10);
    names.truncate(10);
    let mut s = names.join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

impl ImportEmbeddings {
    /// Lists and checks the input: layout, columns, row counts, the
    /// dimension, and that every key is unique. Writes nothing.
    pub fn open(settings: &ImportEmbeddingsSettings) -> Result<ImportEmbeddings> {
        let input = &settings.input;
        let expected = "a parquet file, a folder of *.parquet files (key + embedding columns), \
                        or a clip-retrieval output folder (img_emb/img_emb_N.npy + \
                        metadata/metadata_N.parquet)";
        if !input.exists() {
            bail!(
                "input {} does not exist; expected {expected}",
                input.display()
            );
        }
        let (root, layout, files) = if input.is_file() {
            if !input
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
            {
                bail!(
                    "input {} is not a .parquet file; expected {expected}",
                    input.display()
                );
            }
            let root = input.parent().unwrap_or(Path::new("")).to_path_buf();
            (root, Layout::Parquet, vec![input.clone()])
        } else if input.join("img_emb").is_dir() {
            (input.clone(), Layout::ClipRetrieval, Vec::new())
        } else {
            let files = parquet_files(input)?;
            if files.is_empty() {
                let found = listing(input);
                if found.is_empty() {
                    bail!(
                        "input folder {} is empty; expected {expected}",
                        input.display()
                    );
                }
                bail!(
                    "input folder {}: neither layout recognised; expected {expected}; found: {found}",
                    input.display()
                );
            }
            (input.clone(), Layout::Parquet, files)
        };
        let mut sources: Vec<Source> = Vec::with_capacity(files.len());
        let mut dim: Option<(usize, String)> = None;
        let mut agree = |d: usize, from: String| -> Result<()> {
            match &dim {
                Some((d0, from0)) if *d0 != d => bail!(
                    "{from}: embeddings of dimension {d}, but {from0} has dimension {d0}; \
                     every vector must have the same dimension"
                ),
                Some(_) => Ok(()),
                None => {
                    dim = Some((d, from));
                    Ok(())
                }
            }
        };
        let key_col;
        match layout {
            Layout::Parquet => {
                key_col = settings.key_col.clone().unwrap_or_else(|| "key".into());
                for path in files {
                    let cols = columns(&path)?;
                    check_key(&path, &cols, &key_col, "--key-col")?;
                    if let Some(d) = check_embedding(&path, &cols, &settings.embedding_col)? {
                        agree(d, path.display().to_string())?;
                    }
                    let rows = curate_io::row_count(&path)?;
                    sources.push(Source {
                        name: rel(&root, &path),
                        table: path,
                        npy: None,
                        rows,
                    });
                }
            }
            Layout::ClipRetrieval => {
                let emb = numbered(&root.join("img_emb"), "img_emb_", ".npy")?;
                let meta = numbered(&root.join("metadata"), "metadata_", ".parquet")?;
                if emb.is_empty() {
                    bail!(
                        "{}: no img_emb_N.npy files; expected a clip-retrieval output folder \
                         (img_emb/img_emb_N.npy + metadata/metadata_N.parquet); found in img_emb/: {}",
                        root.display(),
                        listing(&root.join("img_emb"))
                    );
                }
                let meta_of: HashMap<u64, PathBuf> = meta.iter().cloned().collect();
                let emb_of: HashMap<u64, PathBuf> = emb.iter().cloned().collect();
                if let Some((n, p)) = meta.iter().find(|(n, _)| !emb_of.contains_key(n)) {
                    bail!("{} has no img_emb/img_emb_{n}.npy beside it", p.display());
                }
                let first_meta = emb.first().and_then(|(n, _)| meta_of.get(n)).cloned();
                let mut first_cols = None;
                if let Some(m) = &first_meta {
                    first_cols = Some(columns(m)?);
                }
                key_col = match (&settings.key_col, &first_cols) {
                    (Some(k), _) => k.clone(),
                    (None, Some(cols)) if find(cols, "key").is_some() => "key".into(),
                    _ => "image_path".into(),
                };
                for (n, npy_path) in &emb {
                    let Some(meta_path) = meta_of.get(n) else {
                        bail!(
                            "{} has no metadata/metadata_{n}.parquet beside it",
                            npy_path.display()
                        );
                    };
                    let npy = Npy::open(npy_path)?;
                    let cols = columns(meta_path)?;
                    check_key(
                        meta_path,
                        &cols,
                        &key_col,
                        "--key-col, else `key` or `image_path`",
                    )?;
                    let rows = curate_io::row_count(meta_path)?;
                    if rows != npy.rows {
                        bail!(
                            "row counts differ: {} has {} rows, {} has {rows}",
                            npy_path.display(),
                            npy.rows,
                            meta_path.display()
                        );
                    }
                    agree(npy.dim, npy_path.display().to_string())?;
                    sources.push(Source {
                        table: meta_path.clone(),
                        rows,
                        name: rel(&root, npy_path),
                        npy: Some(npy),
                    });
                }
            }
        }
        let mut this = ImportEmbeddings {
            root,
            layout,
            sources,
            key_col,
            embedding_col: settings.embedding_col.clone(),
            meta: EmbeddingsMeta {
                model: String::new(),
                dim: 0,
                dtype: settings.dtype,
                output: OUTPUT.into(),
            },
            schema: embeddings::arrow_schema(&EmbeddingsMeta {
                model: String::new(),
                dim: 1,
                dtype: settings.dtype,
                output: OUTPUT.into(),
            })?,
            dim_from: String::new(),
        };
        this.check_keys()?;
        // A list column: the first vector's width (every other one is checked against it).
        if dim.is_none() {
            dim = this.first_dim()?;
        }
        let Some((d, from)) = dim else {
            bail!(
                "{}: no embedding to take the dimension from (every vector is null); pass --dim",
                settings.input.display()
            );
        };
        if let Some(want) = settings.dim {
            if want != d {
                bail!("--dim {want}, but {from} has dimension {d}");
            }
        }
        let model = settings.model_id.clone().unwrap_or_else(|| {
            let name = std::fs::canonicalize(input)
                .ok()
                .and_then(|p| {
                    if p.is_file() {
                        p.file_stem().map(|s| s.to_string_lossy().into_owned())
                    } else {
                        p.file_name().map(|s| s.to_string_lossy().into_owned())
                    }
                })
                .unwrap_or_else(|| input.display().to_string());
            format!("imported:{name}")
        });
        this.meta.model = model;
        this.meta.dim = d;
        this.schema = embeddings::arrow_schema(&this.meta)?;
        this.dim_from = from;
        Ok(this)
    }

    /// Every key column read once: a null key or a key seen twice is an error naming the rows.
    fn check_keys(&self) -> Result<()> {
        let mut seen: HashMap<String, (usize, u64)> = HashMap::new();
        for (f, src) in self.sources.iter().enumerate() {
            let keys = self.read_keys(src, 0, None)?;
            for (row, key) in keys.into_iter().enumerate() {
                let row = row as u64;
                let Some(key) = key else {
                    bail!(
                        "row {row} of {} has a null key (column `{}`)",
                        src.table.display(),
                        self.key_col
                    );
                };
                if let Some(&(f0, row0)) = seen.get(&key) {
                    bail!(
                        "key `{key}` appears twice: row {row0} of {} and row {row} of {}; \
                         keys must be unique across the input",
                        self.sources[f0].table.display(),
                        src.table.display()
                    );
                }
                seen.insert(key, (f, row));
            }
        }
        Ok(())
    }

    /// Keys of rows `start..start + len` (all when `len` is `None`) of a source.
    fn read_keys(
        &self,
        src: &Source,
        start: u64,
        len: Option<usize>,
    ) -> Result<Vec<Option<String>>> {
        let lf = scan(&src.table)?;
        let key = self.key_col.as_str();
        Ok(guarded(
            &format!("reading `{key}` of {}", src.table.display()),
            || {
                let lf = match len {
                    Some(n) => lf.slice(start as i64, n as _),
                    None => lf,
                };
                let df = lf
                    .select([col(key).cast(PlType::String).alias("k")])
                    .collect()?;
                let k = df.column("k")?.str()?;
                Ok(k.iter().map(|s| s.map(str::to_string)).collect())
            },
        )?)
    }

    /// Rows `start..start + len` of a source: keys and vectors as f32 (a
    /// null inside a vector reads as NaN).
    fn read_chunk(&self, src: &Source, start: u64, len: usize) -> Result<(Vec<String>, Vectors)> {
        if let Some(npy) = &src.npy {
            let keys = self.read_keys(src, start, Some(len))?;
            let values = npy.read_rows(start, len)?;
            let vectors = values
                .chunks_exact(npy.dim)
                .map(|v| Some(v.to_vec()))
                .collect();
            return Ok((
                keys.into_iter().map(Option::unwrap_or_default).collect(),
                vectors,
            ));
        }
        let lf = scan(&src.table)?;
        let (key, emb) = (self.key_col.as_str(), self.embedding_col.as_str());
        let what = format!("reading `{key}`, `{emb}` of {}", src.table.display());
        Ok(guarded(&what, || -> PolarsResult<_> {
            let df = lf
                .slice(start as i64, len as _)
                .select([
                    col(key).cast(PlType::String).alias("k"),
                    col(emb)
                        .cast(PlType::List(Box::new(PlType::Float32)))
                        .alias("e"),
                ])
                .collect()?;
            let k = df.column("k")?.str()?;
            let keys = k
                .iter()
                .map(|s| s.unwrap_or_default().to_string())
                .collect();
            let e = df.column("e")?.list()?;
            let mut vectors = Vec::with_capacity(e.len());
            for v in e.amortized_iter() {
                vectors.push(match v {
                    None => None,
                    Some(s) => Some(
                        s.as_ref()
                            .f32()?
                            .iter()
                            .map(|x| x.unwrap_or(f32::NAN))
                            .collect(),
                    ),
                });
            }
            Ok((keys, vectors))
        })?)
    }

    /// The width of the first non-null vector, and where it is.
    fn first_dim(&self) -> Result<Option<(usize, String)>> {
        for src in &self.sources {
            let mut start = 0;
            while start < src.rows {
                let len = CHUNK.min((src.rows - start) as usize);
                let (keys, vectors) = self.read_chunk(src, start, len)?;
                if let Some((i, v)) = vectors
                    .iter()
                    .enumerate()
                    .find_map(|(i, v)| v.as_ref().map(|v| (i, v)))
                {
                    if v.is_empty() {
                        bail!(
                            "row {} (key `{}`) of {}: an empty embedding",
                            start + i as u64,
                            keys[i],
                            src.label()
                        );
                    }
                    return Ok(Some((
                        v.len(),
                        format!(
                            "row {} (key `{}`) of {}",
                            start + i as u64,
                            keys[i],
                            src.label()
                        ),
                    )));
                }
                start += len as u64;
            }
        }
        Ok(None)
    }

    /// The dimension stored.
    pub fn dim(&self) -> usize {
        self.meta.dim
    }

    /// The model id stored.
    pub fn model(&self) -> &str {
        &self.meta.model
    }
}

/// A raw vector as a row: normalised, or why it cannot be.
pub fn import_vector(v: Option<Vec<f32>>) -> Outcome<Vec<f32>> {
    let invalid = |why: &str| Err((INVALID.to_string(), why.to_string()));
    let Some(v) = v else {
        return invalid("null embedding");
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return invalid(&format!("value {i} is {} (null or non-finite)", v[i]));
    }
    let v = l2_normalise(v);
    if v.iter().all(|x| *x == 0.0) {
        return invalid("zero vector (no direction to normalise)");
    }
    Ok(v)
}

impl Stage for ImportEmbeddings {
    fn name(&self) -> &str {
        "import-embeddings"
    }

    fn table(&self) -> &'static TableSchema {
        embeddings::table()
    }

    fn spec(&self) -> Result<StageSpec> {
        let mut fp = Fingerprint::new();
        for s in &self.sources {
            fp.add(s.name.as_bytes());
            fp.add(&s.rows.to_le_bytes());
            for p in std::iter::once(&s.table).chain(s.npy.as_ref().map(|n| &n.path)) {
                let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                fp.add(&len.to_le_bytes());
            }
        }
        let embedding_col = match self.layout {
            Layout::Parquet => Some(&self.embedding_col),
            Layout::ClipRetrieval => None,
        };
        Ok(StageSpec {
            stage: self.name().into(),
            schema: self.table().name.clone(),
            config: serde_json::json!({
                "model": self.meta.model,
                "dim": self.meta.dim,
                "dtype": self.meta.dtype.as_str(),
                "layout": self.layout.as_str(),
                "key_col": self.key_col,
                "embedding_col": embedding_col,
            }),
            inputs: Inputs {
                kind: self.layout.as_str().into(),
                location: self.root.display().to_string(),
                items: self.sources.iter().map(|s| s.rows).sum(),
                fingerprint: fp.finish(),
                shards: self.sources.iter().map(|s| s.name.clone()).collect(),
            },
            num_shards: self.sources.len() as u32,
        })
    }

    fn shard_items(&self, shard: u32) -> u64 {
        self.sources.get(shard as usize).map_or(0, |s| s.rows)
    }

    fn shard_label(&self, shard: u32) -> Option<String> {
        self.sources.get(shard as usize).map(Source::label)
    }

    fn unit(&self) -> &str {
        "embeddings"
    }

    fn write_shard(&mut self, shard: u32, out: &mut ShardOutput<'_>) -> Result<ShardRecord> {
        let src = self.sources[shard as usize].clone();
        let dim = self.meta.dim;
        let mut shard_out = out.begin(shard, embeddings::table(), self.schema.clone(), CHUNK)?;
        let mut start = 0u64;
        while start < src.rows {
            let len = CHUNK.min((src.rows - start) as usize);
            let (keys, vectors) = self.read_chunk(&src, start, len)?;
            if keys.len() != len || vectors.len() != len {
                return Err(StageError::invalid(format!(
                    "{}: rows {start}..{} read as {} keys and {} vectors",
                    src.label(),
                    start + len as u64,
                    keys.len(),
                    vectors.len()
                )));
            }
            let mut rows = Vec::with_capacity(len);
            for (i, (key, v)) in keys.iter().zip(vectors).enumerate() {
                if let Some(v) = &v {
                    if v.len() != dim {
                        bail!(
                            "row {} (key `{key}`) of {}: an embedding of dimension {}, but {} has \
                             dimension {dim}; every vector must have the same dimension",
                            start + i as u64,
                            src.label(),
                            v.len(),
                            self.dim_from
                        );
                    }
                }
                rows.push(import_vector(v));
            }
            let batch = embeddings::to_batch(&self.schema, &self.meta, &keys, &rows)?;
            shard_out.write(
                &batch,
                rows.iter()
                    .filter_map(|r| r.as_ref().err().map(|(reason, _)| reason.as_str())),
            )?;
            out.wrote(len);
            start += len as u64;
        }
        shard_out.commit(vec![src.name.clone()], 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_embeddings_vectors_are_normalised_or_invalid() {
        let v = import_vector(Some(vec![3.0, 4.0])).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        for bad in [
            None,
            Some(vec![0.0, 0.0]),
            Some(vec![1.0, f32::NAN]),
            Some(vec![f32::INFINITY, 1.0]),
        ] {
            let (reason, _) = import_vector(bad.clone()).unwrap_err();
            assert_eq!(reason, INVALID, "{bad:?}");
        }
    }

    fn settings(input: &Path) -> ImportEmbeddingsSettings {
        ImportEmbeddingsSettings {
            input: input.to_path_buf(),
            key_col: None,
            embedding_col: "embedding".into(),
            model_id: None,
            dtype: Dtype::F16,
            dim: None,
        }
    }

    fn write_clip(dir: &Path, n: u64, keys: &[&str], rows: &[Vec<f32>]) {
        use polars::prelude::*;
        std::fs::create_dir_all(dir.join("img_emb")).unwrap();
        std::fs::create_dir_all(dir.join("metadata")).unwrap();
        std::fs::write(
            dir.join(format!("img_emb/img_emb_{n}.npy")),
            npy::encode(npy::NpyDtype::F32, rows),
        )
        .unwrap();
        let mut df = polars::df!("image_path" => keys, "caption" => keys).unwrap();
        let f = std::fs::File::create(dir.join(format!("metadata/metadata_{n}.parquet"))).unwrap();
        ParquetWriter::new(f).finish(&mut df).unwrap();
    }

    #[test]
    fn import_embeddings_clip_layout_is_listed_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("clip");
        write_clip(
            &root,
            0,
            &["a", "b"],
            &[vec![1.0, 0.0, 0.0], vec![0.0, 2.0, 0.0]],
        );
        write_clip(&root, 1, &["c"], &[vec![0.0, 0.0, 3.0]]);
        let s = ImportEmbeddings::open(&settings(&root)).unwrap();
        assert_eq!((s.dim(), s.model()), (3, "imported:clip"));
        assert_eq!(s.key_col, "image_path");
        assert_eq!(s.sources.len(), 2);
        let (keys, v) = s.read_chunk(&s.sources[0], 1, 1).unwrap();
        assert_eq!(
            (keys, v),
            (vec!["b".to_string()], vec![Some(vec![0.0, 2.0, 0.0])])
        );
        // --dim asserts the dimension.
        let mut bad = settings(&root);
        bad.dim = Some(4);
        let e = ImportEmbeddings::open(&bad).err().unwrap().to_string();
        assert!(e.contains("--dim 4") && e.contains("dimension 3"), "{e}");
        // A shared key names both rows.
        write_clip(
            &root,
            2,
            &["x", "a"],
            &[vec![1.0, 1.0, 1.0], vec![1.0, 0.0, 1.0]],
        );
        let e = ImportEmbeddings::open(&settings(&root))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("row 0 of")
                && e.contains("metadata_0.parquet")
                && e.contains("row 1 of")
                && e.contains("metadata_2.parquet"),
            "{e}"
        );
        // Row counts that differ name both files.
        write_clip(
            &root,
            2,
            &["x"],
            &[vec![1.0, 1.0, 1.0], vec![1.0, 0.0, 1.0]],
        );
        std::fs::remove_file(root.join("metadata/metadata_2.parquet")).unwrap();
        write_clip(&tmp.path().join("other"), 2, &["x"], &[vec![1.0, 1.0, 1.0]]);
        std::fs::copy(
            tmp.path().join("other/metadata/metadata_2.parquet"),
            root.join("metadata/metadata_2.parquet"),
        )
        .unwrap();
        let e = ImportEmbeddings::open(&settings(&root))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("img_emb_2.npy has 2 rows") && e.contains("metadata_2.parquet has 1"),
            "{e}"
        );
    }

    #[test]
    fn import_embeddings_unrecognised_inputs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let e = ImportEmbeddings::open(&settings(tmp.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is empty") && e.contains("img_emb"), "{e}");
        std::fs::write(tmp.path().join("notes.txt"), "x").unwrap();
        let e = ImportEmbeddings::open(&settings(tmp.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("neither layout") && e.contains("notes.txt"),
            "{e}"
        );
    }
}
