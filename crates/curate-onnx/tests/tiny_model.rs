//! The runtime `curate setup` installs loads a real ONNX model and computes
//! what numpy computed for the same weights (fixtures/models/tiny-onnx).

use std::path::PathBuf;

use curate_onnx::session::{Device, Model, ModelOptions};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn runtime() -> &'static curate_onnx::Runtime {
    let home = std::env::var_os("CURATE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".curate"));
    curate_onnx::init(&[home.join("onnxruntime-gpu"), home.join("onnxruntime")])
        .unwrap_or_else(|e| panic!("{e}\n(run `cargo run -- setup` first)"))
}

fn reference() -> serde_json::Value {
    let text =
        std::fs::read_to_string(repo().join("fixtures/models/tiny-onnx/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn model_path() -> PathBuf {
    repo().join("fixtures/models/tiny-onnx/model.onnx")
}

#[test]
fn tiny_model_matches_the_numpy_reference() {
    let rt = runtime();
    assert_eq!(rt.version, curate_onnx::ORT_VERSION);
    assert!(curate_onnx::available_providers()
        .unwrap()
        .iter()
        .any(|p| p == "CPUExecutionProvider"));

    let mut model = Model::load(
        rt,
        &model_path(),
        &ModelOptions {
            device: Device::Cpu,
            threads: 1,
            tf32: false,
        },
    )
    .unwrap();
    model.expect(&["x"], &["y"]).unwrap();
    let r = reference();
    let x: Vec<f32> = r["input"]["x"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let want: Vec<f32> = r["expected_output"]["y"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let out = model.run_f32(vec![("x", vec![2, 4], x)], &["y"]).unwrap();
    let (shape, y) = &out[0];
    assert_eq!(shape, &vec![2, 3]);
    let tol = r["tolerance"].as_f64().unwrap() as f32;
    for (a, b) in y.iter().zip(&want) {
        assert!((a - b).abs() <= tol, "{y:?} vs {want:?}");
    }
    // Not a constant: the second row has a ReLU-clamped zero, the first does not.
    assert!(want.contains(&0.0) && want.iter().filter(|v| **v > 0.0).count() >= 4);
}

#[test]
fn wrong_tensor_names_list_what_the_model_has() {
    let model = Model::load(runtime(), &model_path(), &ModelOptions::default()).unwrap();
    let e = model
        .expect(&["pixel_values"], &["image_embeds"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected input `pixel_values`"), "{e}");
    assert!(e.contains("`x`"), "{e}");
    let e = model
        .expect(&["x"], &["image_embeds"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("expected output `image_embeds`") && e.contains("`y`"),
        "{e}"
    );
}

#[test]
fn missing_model_file_is_named() {
    let missing = repo().join("fixtures/models/tiny-onnx/absent.onnx");
    let e = Model::load(runtime(), &missing, &ModelOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("absent.onnx") && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn cuda_without_the_gpu_runtime_fails_instead_of_falling_back() {
    let rt = runtime();
    if curate_onnx::available_providers()
        .unwrap()
        .iter()
        .any(|p| p == "CUDAExecutionProvider")
    {
        // The GPU wheel is installed here: the request is legitimate.
        return;
    }
    let e = Model::load(
        rt,
        &model_path(),
        &ModelOptions {
            device: Device::Cuda(0),
            threads: 0,
            tf32: false,
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("CUDAExecutionProvider") && e.contains("curate setup --gpu"),
        "{e}"
    );
}

#[test]
fn device_strings() {
    assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
    assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
    assert!("gpu".parse::<Device>().is_err());
}
