//! Where curate keeps its own files.

use std::path::PathBuf;

/// The project-local folder for installed runtimes: `$CURATE_HOME`, else
/// `.curate` in the checkout this binary was built from, else
/// `~/.local/share/curate`.
pub fn curate_home() -> PathBuf {
    if let Some(h) = std::env::var_os("CURATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    let checkout = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if checkout.join("Cargo.toml").is_file() {
        return checkout.join(".curate");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("curate")
}

/// Install folders searched for ONNX Runtime, GPU build first.
pub fn onnxruntime_dirs() -> Vec<PathBuf> {
    let home = curate_home();
    vec![home.join("onnxruntime-gpu"), home.join("onnxruntime")]
}
