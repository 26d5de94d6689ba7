//! The `.npy` files clip-retrieval writes (`img_emb/img_emb_N.npy`): a
//! 2-D little-endian float16 or float32 array in C order. Format:
//! <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>
//! — the magic `\x93NUMPY`, a version byte pair, the header length (u16
//! for version 1, u32 for 2 and 3), then a Python dict literal with
//! `descr`, `fortran_order` and `shape`, then the data.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use curate_stage::{bail, Context, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Element type of an array this reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    F16,
    F32,
}

impl NpyDtype {
    pub fn size(self) -> usize {
        match self {
            NpyDtype::F16 => 2,
            NpyDtype::F32 => 4,
        }
    }
}

/// A `.npy` file's header: where its rows are.
#[derive(Debug, Clone)]
pub struct Npy {
    pub path: PathBuf,
    pub dtype: NpyDtype,
    pub rows: u64,
    pub dim: usize,
    /// Offset of the first value.
    data_offset: u64,
}

impl Npy {
    /// Reads and checks the header (and that the file holds all the data it announces).
    pub fn open(path: &Path) -> Result<Npy> {
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut pre = [0u8; 10];
        f.read_exact(&mut pre)
            .with_context(|| format!("{}: not a .npy file (too short)", path.display()))?;
        if &pre[..6] != MAGIC {
            bail!(
                "{}: not a .npy file (expected the magic \\x93NUMPY, found {:?})",
                path.display(),
                String::from_utf8_lossy(&pre[..6])
            );
        }
        let major = pre[6];
        let (header_len, prefix) = match major {
            1 => (u16::from_le_bytes([pre[8], pre[9]]) as usize, 10u64),
            2 | 3 => {
                let mut rest = [0u8; 2];
                f.read_exact(&mut rest)
                    .with_context(|| format!("{}: truncated .npy header", path.display()))?;
                (
                    u32::from_le_bytes([pre[8], pre[9], rest[0], rest[1]]) as usize,
                    12u64,
                )
            }
            v => bail!(
                "{}: .npy format version {v}.{}, expected 1, 2 or 3",
                path.display(),
                pre[7]
            ),
        };
        let mut header = vec![0u8; header_len];
        f.read_exact(&mut header)
            .with_context(|| format!("{}: truncated .npy header", path.display()))?;
        let header = String::from_utf8_lossy(&header).into_owned();
        let (dtype, rows, dim) = parse_header(&header)
            .map_err(|e| curate_stage::StageError::invalid(format!("{}: {e}", path.display())))?;
        let data_offset = prefix + header_len as u64;
        let need = data_offset + rows * (dim * dtype.size()) as u64;
        let len = f
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if len < need {
            bail!(
                "{}: truncated: a ({rows}, {dim}) array needs {need} bytes, the file has {len}",
                path.display()
            );
        }
        Ok(Npy {
            path: path.to_path_buf(),
            dtype,
            rows,
            dim,
            data_offset,
        })
    }

    /// Rows `start..start + count` as f32, row after row (`count * dim` values).
    pub fn read_rows(&self, start: u64, count: usize) -> Result<Vec<f32>> {
        if start + count as u64 > self.rows {
            bail!(
                "{}: rows {start}..{} asked of an array of {} rows",
                self.path.display(),
                start + count as u64,
                self.rows
            );
        }
        let size = self.dtype.size();
        let row_bytes = (self.dim * size) as u64;
        let mut f =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        f.seek(SeekFrom::Start(self.data_offset + start * row_bytes))
            .with_context(|| format!("reading {}", self.path.display()))?;
        let mut bytes = vec![0u8; count * row_bytes as usize];
        f.read_exact(&mut bytes)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(match self.dtype {
            NpyDtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            NpyDtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        })
    }
}

/// The value after `'name':` in a header dict literal.
fn value_of<'a>(header: &'a str, name: &str) -> Result<&'a str, String> {
    let pat_s = format!("'{name}'");
    let pat_d = format!("\"{name}\"");
    let at = header
        .find(&pat_s)
        .map(|i| i + pat_s.len())
        .or_else(|| header.find(&pat_d).map(|i| i + pat_d.len()))
        .ok_or_else(|| format!("the .npy header has no '{name}': {}", header.trim()))?;
    let rest = header[at..].trim_start();
    rest.strip_prefix(':')
        .map(str::trim_start)
        .ok_or_else(|| format!("malformed .npy header: {}", header.trim()))
}

/// `descr`, `fortran_order` and `shape` of a header: (dtype, rows, dim).
pub fn parse_header(header: &str) -> Result<(NpyDtype, u64, usize), String> {
    let descr = value_of(header, "descr")?;
    let quote = descr
        .chars()
        .next()
        .filter(|c| *c == '\'' || *c == '"')
        .ok_or_else(|| format!("malformed 'descr' in the .npy header: {}", header.trim()))?;
    let descr = &descr[1..];
    let descr = &descr[..descr
        .find(quote)
        .ok_or_else(|| format!("malformed 'descr' in the .npy header: {}", header.trim()))?];
    let dtype = match descr {
        "<f2" => NpyDtype::F16,
        "<f4" => NpyDtype::F32,
        other => {
            return Err(format!(
                "array dtype '{other}', expected little-endian float16 ('<f2') or float32 ('<f4')"
            ))
        }
    };
    let fortran = value_of(header, "fortran_order")?;
    if fortran.starts_with("True") {
        return Err(
            "the array is in Fortran order ('fortran_order': True), expected C order \
             (save it with numpy.ascontiguousarray)"
                .into(),
        );
    } else if !fortran.starts_with("False") {
        return Err(format!(
            "malformed 'fortran_order' in the .npy header: {}",
            header.trim()
        ));
    }
    let shape = value_of(header, "shape")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.find(')').map(|end| &s[..end]))
        .ok_or_else(|| format!("malformed 'shape' in the .npy header: {}", header.trim()))?;
    let dims: Vec<u64> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("malformed 'shape' in the .npy header: ({shape})"))?;
    match dims[..] {
        [rows, dim] if dim > 0 => Ok((dtype, rows, dim as usize)),
        _ => Err(format!(
            "array of shape ({shape}), expected 2-D (rows, dim) with dim > 0"
        )),
    }
}

/// A `.npy` file of `rows` (all the same width) in `dtype`, as numpy writes it (version 1).
#[cfg(test)]
pub fn encode(dtype: NpyDtype, rows: &[Vec<f32>]) -> Vec<u8> {
    let dim = rows.first().map_or(0, Vec::len);
    let descr = match dtype {
        NpyDtype::F16 => "<f2",
        NpyDtype::F32 => "<f4",
    };
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {dim}), }}",
        rows.len()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in rows.iter().flatten() {
        match dtype {
            NpyDtype::F16 => out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes()),
            NpyDtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_embeddings_npy_round_trip_f16_and_f32() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![vec![0.5, -1.25, 3.0], vec![2.0, 0.0, -0.75]];
        for dtype in [NpyDtype::F16, NpyDtype::F32] {
            let p = dir.path().join(format!("{dtype:?}.npy"));
            std::fs::write(&p, encode(dtype, &rows)).unwrap();
            let n = Npy::open(&p).unwrap();
            assert_eq!((n.dtype, n.rows, n.dim), (dtype, 2, 3));
            assert_eq!(n.read_rows(1, 1).unwrap(), rows[1]);
            assert_eq!(n.read_rows(0, 2).unwrap().len(), 6);
            assert!(n.read_rows(1, 2).is_err());
        }
    }

    #[test]
    fn import_embeddings_npy_headers_refused() {
        let ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (7, 512), }";
        assert_eq!(parse_header(ok).unwrap(), (NpyDtype::F32, 7, 512));
        let e = parse_header(&ok.replace("False", "True")).unwrap_err();
        assert!(e.contains("Fortran order"), "{e}");
        let e = parse_header(&ok.replace("<f4", "<f8")).unwrap_err();
        assert!(e.contains("'<f8'"), "{e}");
        let e = parse_header(&ok.replace("<f4", ">f4")).unwrap_err();
        assert!(e.contains("'>f4'"), "{e}");
        let e = parse_header(&ok.replace("(7, 512)", "(7,)")).unwrap_err();
        assert!(e.contains("2-D"), "{e}");
    }

    #[test]
    fn import_embeddings_npy_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        std::fs::write(&p, b"PK\x03\x04 not numpy").unwrap();
        let e = Npy::open(&p).unwrap_err().to_string();
        assert!(e.contains("not a .npy file"), "{e}");
        let mut bytes = encode(NpyDtype::F32, &[vec![1.0, 2.0], vec![3.0, 4.0]]);
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&p, bytes).unwrap();
        let e = Npy::open(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
