//! Image models: a model folder (ONNX file + `preprocessor_config.json`),
//! its pixel preprocessing, and batched runs of one float input to one
//! float output per image (CLIP `pixel_values → image_embeds`, the
//! aesthetic predictor `pixel_values → score`).

use std::path::{Path, PathBuf};

use curate_vision::preprocess::PixelSpec;

use crate::session::{Model, ModelOptions};
use crate::{OnnxError, Runtime};

/// The files of a model folder.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The folder (the ONNX file's folder when a file was given).
    pub dir: PathBuf,
    pub onnx: PathBuf,
    /// `preprocessor_config.json`, searched beside the ONNX file, in the folder, and one folder up.
    pub preprocessor: Option<PathBuf>,
    /// The model id: `_name_or_path` of `config.json` when present, else the folder name.
    pub id: String,
}

impl ModelFiles {
    /// Resolves `path`: an `.onnx` file, or a folder holding one of `candidates` (relative paths, tried in order).
    pub fn resolve(path: &Path, candidates: &[&str]) -> Result<ModelFiles, OnnxError> {
        let (dir, onnx) = if path.is_file() {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (dir, path.to_path_buf())
        } else if path.is_dir() {
            let found = candidates
                .iter()
                .map(|c| path.join(c))
                .find(|p| p.is_file());
            match found {
                Some(onnx) => (path.to_path_buf(), onnx),
                None => {
                    return Err(OnnxError::MissingFile {
                        dir: path.to_path_buf(),
                        expected: candidates.join(" or "),
                        found: list_dir(path),
                    })
                }
            }
        } else {
            return Err(OnnxError::MissingFile {
                dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                expected: format!(
                    "{} (a model folder or an .onnx file)",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ),
                found: path
                    .parent()
                    .map(list_dir)
                    .unwrap_or_else(|| "nothing".into()),
            });
        };
        // Beside the ONNX file, in the folder, or one folder up (transformers.js keeps
        // the configs next to `onnx/`).
        let near = |name: &str| {
            let beside = onnx.parent().map(|p| p.join(name));
            let up = onnx.parent().and_then(Path::parent).map(|p| p.join(name));
            [beside, Some(dir.join(name)), up]
                .into_iter()
                .flatten()
                .find(|p| p.is_file())
        };
        let preprocessor = near("preprocessor_config.json");
        let id = near("config.json")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                v.get("_name_or_path")
                    .and_then(|n| n.as_str())
                    .map(String::from)
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                let d = dir.canonicalize().unwrap_or(dir.clone());
                d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into())
            });
        Ok(ModelFiles {
            dir,
            onnx,
            preprocessor,
            id,
        })
    }

    /// The folder's pixel preprocessing: `defaults` overridden by `preprocessor_config.json` when present.
    pub fn pixel_spec(&self, defaults: PixelSpec) -> Result<PixelSpec, OnnxError> {
        let Some(path) = &self.preprocessor else {
            return Ok(defaults);
        };
        let config_err = |message: String| OnnxError::Config {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| config_err(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| config_err(e.to_string()))?;
        PixelSpec::from_hf_json(&json, defaults).map_err(|e| config_err(e.to_string()))
    }
}

pub(crate) fn list_dir(dir: &Path) -> String {
    let mut names: Vec<String> = walk(dir, dir, 2);
    names.sort();
    if names.is_empty() {
        "an empty or unreadable folder".into()
    } else {
        names.join(", ")
    }
}

fn walk(root: &Path, dir: &Path, depth: u32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() && depth > 1 {
            out.extend(walk(root, &p, depth - 1));
        } else if p.is_file() {
            out.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
        }
    }
    out
}

/// An image model with one pixel input and one float output per image.
pub struct ImageModel {
    pub model: Model,
    pub files: ModelFiles,
    pub input: String,
    pub output: String,
    pub spec: PixelSpec,
    /// Floats per image in the output (1 for a score).
    pub dim: Option<usize>,
}

impl ImageModel {
    /// Loads the model and checks its input (`[B, 3, H, W]` float, H×W equal
    /// to what `spec` produces when fixed) and its output.
    pub fn open(
        rt: &Runtime,
        files: ModelFiles,
        input: &str,
        output: &str,
        spec: PixelSpec,
        options: &ModelOptions,
    ) -> Result<ImageModel, OnnxError> {
        let model = Model::load(rt, &files.onnx, options)?;
        model.expect(&[input], &[output])?;
        let bad = |what: &'static str, expected: String, found: &crate::session::TensorInfo| {
            OnnxError::Tensor {
                path: files.onnx.clone(),
                what,
                expected,
                found: format!("`{}` {}", found.name, found.kind),
            }
        };
        let inp = model.tensor(input).expect("checked above").clone();
        let hw = spec.fixed_hw();
        let want = match hw {
            Some((h, w)) => format!("`{input}` float [B, 3, {h}, {w}]"),
            None => format!("`{input}` float [B, 3, H, W]"),
        };
        match &inp.tensor {
            Some((ty, shape)) => {
                use ort::value::TensorElementType as T;
                let float = matches!(ty, T::Float32 | T::Float16);
                let dims_ok = shape.len() == 4
                    && (shape[1] == 3 || shape[1] < 0)
                    && match hw {
                        Some((h, w)) => {
                            (shape[2] < 0 || shape[2] == h as i64)
                                && (shape[3] < 0 || shape[3] == w as i64)
                        }
                        None => true,
                    };
                if !float || !dims_ok {
                    return Err(bad("input", want, &inp));
                }
            }
            None => return Err(bad("input", want, &inp)),
        }
        let out = model.tensor(output).expect("checked above").clone();
        let dim = match &out.tensor {
            Some((_, shape)) if shape.len() == 1 => Some(1),
            Some((_, shape)) if shape.len() == 2 => (shape[1] > 0).then_some(shape[1] as usize),
            Some((_, shape)) if shape.len() == 3 && shape[2] == 1 => Some(1),
            _ => {
                return Err(bad(
                    "output",
                    format!("`{output}` float [B, D] or [B]"),
                    &out,
                ))
            }
        };
        let mut m = ImageModel {
            model,
            input: input.to_string(),
            output: output.to_string(),
            spec,
            dim,
            files,
        };
        // A dynamic output width: one run on a blank picture tells it.
        if m.dim.is_none() {
            if let Some((h, w)) = m.spec.fixed_hw() {
                m.run(1, h, w, vec![0.0; (3 * h * w) as usize])?;
            }
        }
        Ok(m)
    }

    /// Runs a batch of `n` images of `h`×`w` (CHW floats, concatenated); one output row per image.
    pub fn run(
        &mut self,
        n: usize,
        h: u32,
        w: u32,
        pixels: Vec<f32>,
    ) -> Result<Vec<Vec<f32>>, OnnxError> {
        let shape = vec![n as i64, 3, h as i64, w as i64];
        let (out_shape, data) = self
            .model
            .run_float(&self.input, shape, pixels, &self.output)?;
        let rows = out_shape.first().copied().unwrap_or(0) as usize;
        if rows != n || data.len() % n.max(1) != 0 {
            return Err(OnnxError::Run {
                path: self.files.onnx.clone(),
                message: format!(
                    "output `{}` has shape {out_shape:?} for a batch of {n}",
                    self.output
                ),
            });
        }
        let per = data.len() / n.max(1);
        self.dim.get_or_insert(per);
        Ok(data.chunks(per.max(1)).map(|c| c.to_vec()).collect())
    }
}
