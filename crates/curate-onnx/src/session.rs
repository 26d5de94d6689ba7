//! A model session with named, checked inputs and outputs.
//!
//! Stages name the tensors they need (configurable, because exports
//! differ); [`Model::expect`] fails with one message listing what the model
//! actually has, before any data is processed.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};

use crate::{available_providers, OnnxError, Runtime};

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("`{s}`: expected cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub device: Device,
    /// Intra-op threads; 0 lets ONNX Runtime choose.
    pub threads: usize,
    /// Allow TF32 matrix products on CUDA (faster on Ampere and later, ~1e-3
    /// relative error). Off by default: outputs then match the CPU's to
    /// float32 rounding.
    pub tf32: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            device: Device::Cpu,
            threads: 0,
            tf32: false,
        }
    }
}

/// One input or output as the model declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// e.g. `Tensor<f32>(-1, 4)`.
    pub kind: String,
    /// Element type and shape (−1 for a dynamic axis), when a tensor.
    pub tensor: Option<(TensorElementType, Vec<i64>)>,
}

impl TensorInfo {
    /// True for a float16 tensor.
    pub fn is_f16(&self) -> bool {
        matches!(self.tensor, Some((TensorElementType::Float16, _)))
    }
}

/// A tensor's shape and its data, row-major.
pub type ShapedF32 = (Vec<i64>, Vec<f32>);

pub struct Model {
    path: PathBuf,
    session: Session,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

fn describe(v: &ValueType) -> String {
    v.to_string()
}

impl Model {
    /// Loads `path` on `options.device`. Asking for CUDA where the runtime
    /// has no CUDA provider is an error, never a silent CPU fallback.
    pub fn load(rt: &Runtime, path: &Path, options: &ModelOptions) -> Result<Self, OnnxError> {
        let model_err = |message: String| OnnxError::Model {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(model_err("no such file".into()));
        }
        let mut builder =
            Session::builder(&rt.environment).map_err(|e| model_err(e.to_string()))?;
        if options.threads > 0 {
            builder = builder
                .with_intra_threads(options.threads)
                .map_err(|e| model_err(e.to_string()))?;
        }
        if let Device::Cuda(id) = options.device {
            let available = available_providers()?;
            if !available.iter().any(|p| p == "CUDAExecutionProvider") {
                return Err(OnnxError::ProviderUnavailable {
                    provider: format!("CUDAExecutionProvider (device cuda:{id})"),
                    available: available.join(", "),
                    hint: format!(
                        "this ONNX Runtime ({}) is the CPU build; run `curate setup --gpu`",
                        rt.located.path.display()
                    ),
                });
            }
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(id)
                    .with_tf32(options.tf32)
                    .build()
                    .error_on_failure()])
                .map_err(|e| OnnxError::ProviderUnavailable {
                    provider: format!("CUDAExecutionProvider (device cuda:{id})"),
                    available: "CUDAExecutionProvider".into(),
                    hint: format!("registering it failed: {e}"),
                })?;
        }
        let session = builder
            .commit_from_file(path)
            .map_err(|e| model_err(e.to_string()))?;
        let info = |o: &ort::value::Outlet| TensorInfo {
            name: o.name().to_string(),
            kind: describe(o.dtype()),
            tensor: match o.dtype() {
                ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.to_vec())),
                _ => None,
            },
        };
        let inputs = session.inputs().iter().map(info).collect();
        let outputs = session.outputs().iter().map(info).collect();
        Ok(Model {
            path: path.to_path_buf(),
            session,
            inputs,
            outputs,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that the model has these inputs and outputs, naming what it has otherwise.
    pub fn expect(&self, inputs: &[&str], outputs: &[&str]) -> Result<(), OnnxError> {
        let list = |v: &[TensorInfo]| {
            v.iter()
                .map(|t| format!("`{}` {}", t.name, t.kind))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for want in inputs {
            if !self.inputs.iter().any(|t| t.name == *want) {
                return Err(OnnxError::Tensor {
                    path: self.path.clone(),
                    what: "input",
                    expected: want.to_string(),
                    found: format!("inputs {}", list(&self.inputs)),
                });
            }
        }
        for want in outputs {
            if !self.outputs.iter().any(|t| t.name == *want) {
                return Err(OnnxError::Tensor {
                    path: self.path.clone(),
                    what: "output",
                    expected: want.to_string(),
                    found: format!("outputs {}", list(&self.outputs)),
                });
            }
        }
        Ok(())
    }

    /// Runs with f32 inputs `(name, shape, data)`; returns the named f32 outputs as `(shape, data)`.
    pub fn run_f32(
        &mut self,
        inputs: Vec<(&str, Vec<i64>, Vec<f32>)>,
        outputs: &[&str],
    ) -> Result<Vec<ShapedF32>, OnnxError> {
        let run_err = |message: String| OnnxError::Run {
            path: self.path.clone(),
            message,
        };
        let mut values = Vec::with_capacity(inputs.len());
        for (name, shape, data) in inputs {
            let t = Tensor::from_array((shape, data)).map_err(|e| run_err(e.to_string()))?;
            values.push((
                std::borrow::Cow::Borrowed(name),
                ort::session::SessionInputValue::from(t),
            ));
        }
        let result = self
            .session
            .run(values)
            .map_err(|e| run_err(e.to_string()))?;
        let mut out = Vec::with_capacity(outputs.len());
        for name in outputs {
            let v = result
                .get(*name)
                .ok_or_else(|| run_err(format!("no output `{name}`")))?;
            let (shape, data) = v
                .try_extract_tensor::<f32>()
                .map_err(|e| run_err(format!("output `{name}`: {e}")))?;
            out.push((shape.to_vec(), data.to_vec()));
        }
        Ok(out)
    }

    /// The declared input or output called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.inputs
            .iter()
            .chain(self.outputs.iter())
            .find(|t| t.name == name)
    }

    /// Runs one float input (`f32` data, converted when the model takes
    /// float16) and returns one float output as `f32` (converted from
    /// float16 when the model gives that).
    pub fn run_float(
        &mut self,
        input: &str,
        shape: Vec<i64>,
        data: Vec<f32>,
        output: &str,
    ) -> Result<ShapedF32, OnnxError> {
        let mut out = self.run_inputs(
            vec![(input.to_string(), Input::F32(shape, data))],
            &[output],
        )?;
        Ok(out.remove(0))
    }

    /// Runs with typed inputs; float inputs are converted to float16 where
    /// the model declares it, float outputs are returned as `f32`.
    pub fn run_inputs(
        &mut self,
        inputs: Vec<(String, Input)>,
        outputs: &[&str],
    ) -> Result<Vec<ShapedF32>, OnnxError> {
        let path = self.path.clone();
        let run_err = |message: String| OnnxError::Run {
            path: path.clone(),
            message,
        };
        let mut values: Vec<(
            std::borrow::Cow<'_, str>,
            ort::session::SessionInputValue<'_>,
        )> = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            let f16 = self.tensor(&name).is_some_and(TensorInfo::is_f16);
            let value: ort::session::SessionInputValue = match input {
                Input::F32(shape, data) if f16 => {
                    let half: Vec<half::f16> =
                        data.iter().map(|&x| half::f16::from_f32(x)).collect();
                    Tensor::from_array((shape, half))
                        .map_err(|e| run_err(e.to_string()))?
                        .into()
                }
                Input::F32(shape, data) => Tensor::from_array((shape, data))
                    .map_err(|e| run_err(e.to_string()))?
                    .into(),
                Input::I64(shape, data) => Tensor::from_array((shape, data))
                    .map_err(|e| run_err(e.to_string()))?
                    .into(),
                Input::Bool(shape, data) => Tensor::from_array((shape, data))
                    .map_err(|e| run_err(e.to_string()))?
                    .into(),
            };
            values.push((std::borrow::Cow::Owned(name), value));
        }
        let result = self
            .session
            .run(values)
            .map_err(|e| run_err(e.to_string()))?;
        let mut out = Vec::with_capacity(outputs.len());
        for name in outputs {
            let v = result
                .get(*name)
                .ok_or_else(|| run_err(format!("no output `{name}`")))?;
            if let Ok((shape, data)) = v.try_extract_tensor::<half::f16>() {
                out.push((shape.to_vec(), data.iter().map(|x| x.to_f32()).collect()));
                continue;
            }
            let (shape, data) = v
                .try_extract_tensor::<f32>()
                .map_err(|e| run_err(format!("output `{name}`: {e}")))?;
            out.push((shape.to_vec(), data.to_vec()));
        }
        Ok(out)
    }
}

/// A typed model input: shape and row-major data.
#[derive(Debug, Clone)]
pub enum Input {
    F32(Vec<i64>, Vec<f32>),
    I64(Vec<i64>, Vec<i64>),
    Bool(Vec<i64>, Vec<bool>),
}
