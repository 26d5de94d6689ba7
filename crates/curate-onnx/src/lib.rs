//! ONNX Runtime for curate, loaded at run time (`ort` with `load-dynamic`).
//!
//! Nothing is downloaded at build time. The library comes from the pinned
//! `onnxruntime` wheel (`onnxruntime-gpu` for CUDA) that `curate setup`
//! installs with pip into a project-local folder. [`locate`] searches, in
//! order: `ORT_DYLIB_PATH`; the project-local folders given by the caller
//! (GPU wheel first); the `onnxruntime` package of the `python3` on `PATH`.
//! A failed search lists every place it looked.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use ort;

/// The ONNX Runtime release this build targets (`ort` 2.0.0-rc.15 ⇒ API 1.31).
pub const ORT_VERSION: &str = "1.31.1";
/// The PyPI packages that carry it.
pub const WHEEL_CPU: &str = "onnxruntime";
pub const WHEEL_GPU: &str = "onnxruntime-gpu";

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error(
        "ONNX Runtime {ORT_VERSION} not found; run `curate setup` (or `curate setup --gpu`) to install the pinned wheel, or set ORT_DYLIB_PATH. Looked in:\n{}",
        tried.iter().map(|(w, why)| format!("  - {w}: {why}")).collect::<Vec<_>>().join("\n")
    )]
    NotFound { tried: Vec<(String, String)> },

    #[error("ONNX Runtime at {path} could not be loaded: {message}")]
    Load { path: PathBuf, message: String },

    #[error("ONNX Runtime was already initialised from {loaded}, cannot switch to {wanted}")]
    AlreadyLoaded { loaded: PathBuf, wanted: PathBuf },

    #[error("model {path}: {message}")]
    Model { path: PathBuf, message: String },

    #[error("model {path}: expected {what} `{expected}`, the model has {found}")]
    Tensor {
        path: PathBuf,
        what: &'static str,
        expected: String,
        found: String,
    },

    #[error("execution provider {provider} was requested but is not available (available: {available}); {hint}")]
    ProviderUnavailable {
        provider: String,
        available: String,
        hint: String,
    },

    #[error("model folder {dir}: expected {expected}; found {found}")]
    MissingFile {
        dir: PathBuf,
        expected: String,
        found: String,
    },

    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("inference on {path}: {message}")]
    Run { path: PathBuf, message: String },
}

/// Where a library was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub path: PathBuf,
    /// `ORT_DYLIB_PATH`, `project`, or `python`.
    pub via: &'static str,
}

/// The search, with every candidate and why it was or was not taken.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub found: Option<Located>,
    pub tried: Vec<(String, String)>,
}

/// Looks for the library. `project_dirs` are install folders made by
/// `curate setup` (each holding a pip `--target` tree).
pub fn locate(project_dirs: &[PathBuf]) -> Search {
    let mut search = Search::default();
    match std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            if p.is_file() {
                search.found = Some(Located {
                    path: p,
                    via: "ORT_DYLIB_PATH",
                });
                return search;
            }
            search.tried.push((
                format!("ORT_DYLIB_PATH={}", p.display()),
                "no such file".into(),
            ));
        }
        None => search
            .tried
            .push(("ORT_DYLIB_PATH".into(), "not set".into())),
    }
    for dir in project_dirs {
        let capi = dir.join("onnxruntime").join("capi");
        match find_lib(&capi) {
            Some(p) => {
                search.found = Some(Located {
                    path: p,
                    via: "project",
                });
                return search;
            }
            None => search
                .tried
                .push((capi.display().to_string(), "no libonnxruntime.so*".into())),
        }
    }
    match python_package_dir() {
        Ok(dir) => {
            let capi = dir.join("capi");
            match find_lib(&capi) {
                Some(p) => {
                    search.found = Some(Located {
                        path: p,
                        via: "python",
                    });
                    return search;
                }
                None => search
                    .tried
                    .push((capi.display().to_string(), "no libonnxruntime.so*".into())),
            }
        }
        Err(why) => search
            .tried
            .push(("python3 -c 'import onnxruntime'".into(), why)),
    }
    search
}

/// The newest `libonnxruntime.so.X.Y.Z` (or `.dylib`/`.dll`) in `capi`.
fn find_lib(capi: &Path) -> Option<PathBuf> {
    let mut libs: Vec<PathBuf> = std::fs::read_dir(capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (n.starts_with("libonnxruntime.so")
                || n.starts_with("libonnxruntime.") && n.ends_with(".dylib")
                || n == "onnxruntime.dll")
                && !n.contains("providers")
        })
        .collect();
    libs.sort();
    libs.pop()
}

fn python_package_dir() -> Result<PathBuf, String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u, os; s = u.find_spec('onnxruntime'); print(os.path.dirname(s.origin) if s and s.origin else '')",
        ])
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || dir.is_empty() {
        return Err("no onnxruntime package".into());
    }
    Ok(PathBuf::from(dir))
}

/// An initialised runtime.
#[derive(Debug)]
pub struct Runtime {
    pub located: Located,
    pub version: String,
    pub environment: ort::environment::Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Loads the library found by [`locate`] once per process.
pub fn init(project_dirs: &[PathBuf]) -> Result<&'static Runtime, OnnxError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let search = locate(project_dirs);
    let located = search.found.ok_or(OnnxError::NotFound {
        tried: search.tried,
    })?;
    init_from(located)
}

/// Loads a given library once per process.
pub fn init_from(located: Located) -> Result<&'static Runtime, OnnxError> {
    if let Some(rt) = RUNTIME.get() {
        if rt.located.path != located.path {
            return Err(OnnxError::AlreadyLoaded {
                loaded: rt.located.path.clone(),
                wanted: located.path,
            });
        }
        return Ok(rt);
    }
    let load_err = |message: String| OnnxError::Load {
        path: located.path.clone(),
        message,
    };
    let version = library_version(&located.path).map_err(load_err)?;
    let environment = ort::init_from(&located.path)
        .map_err(|e| load_err(e.to_string()))?
        .with_name("curate")
        .build()
        .map_err(|e| load_err(e.to_string()))?;
    let _ = RUNTIME.set(Runtime {
        located,
        version,
        environment,
    });
    Ok(RUNTIME.get().expect("set above"))
}

/// `OrtGetApiBase()->GetVersionString()` of a library file.
pub fn library_version(path: &Path) -> Result<String, String> {
    // SAFETY: loading ONNX Runtime runs its initialisers, which is what
    // `ort` does next anyway; the symbol's signature is the C API's.
    unsafe {
        let lib = libloading::Library::new(path).map_err(|e| e.to_string())?;
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase")
                .map_err(|_| "does not export OrtGetApiBase (not ONNX Runtime?)".to_string())?;
        let base = get_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        let v = ((*base).GetVersionString)();
        let v = std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned();
        // Keep the library loaded: ort will dlopen the same file.
        std::mem::forget(lib);
        Ok(v)
    }
}

/// Execution providers this runtime build offers (`CPUExecutionProvider`,
/// `CUDAExecutionProvider`, …). Requires [`init`] first.
pub fn available_providers() -> Result<Vec<String>, OnnxError> {
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut n: std::ffi::c_int = 0;
    // SAFETY: C API contract: on success `list` holds `n` C strings that we
    // release with ReleaseAvailableProviders.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut list, &mut n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Err(OnnxError::Load {
                path: RUNTIME
                    .get()
                    .map(|r| r.located.path.clone())
                    .unwrap_or_default(),
                message: "GetAvailableProviders failed".into(),
            });
        }
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n as isize {
            out.push(
                std::ffi::CStr::from_ptr(*list.offset(i))
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        let _ = (api.ReleaseAvailableProviders)(list, n);
        Ok(out)
    }
}

pub mod florence;
pub mod session;
pub mod vision;
