//! `curate doctor`: what this machine offers, and where it looked.

use crate::cli::DoctorArgs;
use crate::paths;

pub fn run(_args: &DoctorArgs) -> anyhow::Result<()> {
    println!("curate {}", env!("CARGO_PKG_VERSION"));
    println!("project-local folder: {}", paths::curate_home().display());

    let dirs = paths::onnxruntime_dirs();
    let search = curate_onnx::locate(&dirs);
    println!("ONNX Runtime (expects {}):", curate_onnx::ORT_VERSION);
    for (place, why) in &search.tried {
        println!("  searched {place}: {why}");
    }
    let ort_ok = match &search.found {
        None => {
            println!("  not found: run `curate setup` (CPU) or `curate setup --gpu` (CUDA)");
            false
        }
        Some(found) => {
            println!("  found {} (via {})", found.path.display(), found.via);
            match curate_onnx::init_from(found.clone()) {
                Ok(rt) => {
                    println!("  version {}", rt.version);
                    match curate_onnx::available_providers() {
                        Ok(p) => println!("  execution providers: {}", p.join(", ")),
                        Err(e) => println!("  execution providers: unknown ({e})"),
                    }
                    true
                }
                Err(e) => {
                    println!("  cannot load: {e}");
                    false
                }
            }
        }
    };

    println!(
        "JPEG decoding for model inputs: {}",
        curate_vision::turbo::describe()
    );
    println!("candle devices:");
    for d in curate_gen::devices() {
        println!("  {}: {}", d.name, d.detail);
    }
    if !curate_gen::cuda_compiled() {
        println!("  cuda: not compiled in (build with `--features cuda`)");
    }

    println!("schemas:");
    for s in curate_core::schema::registry() {
        println!("  {} v{}", s.name, s.version);
    }
    if !ort_ok {
        anyhow::bail!("ONNX Runtime is not usable (see above)");
    }
    Ok(())
}
