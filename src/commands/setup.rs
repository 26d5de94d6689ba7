//! `curate setup`: installs the pinned ONNX Runtime wheel from PyPI with
//! pip into the project-local folder (`--target`, no dependencies, binary
//! wheels only). Idempotent: an installed pinned version is kept.

use std::process::Command;

use anyhow::{bail, Context};
use curate_onnx::{ORT_VERSION, WHEEL_CPU, WHEEL_GPU};

use crate::cli::SetupArgs;
use crate::paths;

pub fn run(args: &SetupArgs) -> anyhow::Result<()> {
    let home = args.dir.clone().unwrap_or_else(paths::curate_home);
    let (wheel, folder) = if args.gpu {
        (WHEEL_GPU, "onnxruntime-gpu")
    } else {
        (WHEEL_CPU, "onnxruntime")
    };
    let target = home.join(folder);
    let dist_info = target.join(format!(
        "{}-{ORT_VERSION}.dist-info",
        wheel.replace('-', "_")
    ));
    if dist_info.is_dir() && !args.force {
        println!(
            "{wheel}=={ORT_VERSION} already installed in {}",
            target.display()
        );
    } else {
        if target.exists() {
            std::fs::remove_dir_all(&target)
                .with_context(|| format!("removing the old install at {}", target.display()))?;
        }
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        let spec = format!("{wheel}=={ORT_VERSION}");
        println!("installing {spec} into {}", target.display());
        let status = Command::new(&args.python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
                "--no-deps",
                "--only-binary=:all:",
                "--target",
            ])
            .arg(&target)
            .arg(&spec)
            .status()
            .with_context(|| {
                format!(
                    "running `{} -m pip` (is Python with pip installed?)",
                    args.python
                )
            })?;
        if !status.success() {
            bail!("`{} -m pip install {spec}` failed ({status})", args.python);
        }
    }
    let search = curate_onnx::locate(std::slice::from_ref(&target));
    let found = match search.found {
        Some(f) if f.via == "project" => f,
        _ => bail!(
            "{wheel} installed in {} but no libonnxruntime found under onnxruntime/capi",
            target.display()
        ),
    };
    let version = curate_onnx::library_version(&found.path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", found.path.display()))?;
    if version != ORT_VERSION {
        bail!(
            "{} reports ONNX Runtime {version}, expected {ORT_VERSION}",
            found.path.display()
        );
    }
    println!("ONNX Runtime {version} ready: {}", found.path.display());
    if args.gpu {
        println!("note: the CUDA provider needs CUDA 12 and cuDNN 9 libraries on LD_LIBRARY_PATH");
    }
    Ok(())
}
