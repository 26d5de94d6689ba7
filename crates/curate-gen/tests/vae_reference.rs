//! The FLUX VAE against diffusers' `AutoencoderKL` on the tiny random-weight
//! fixture (fixtures/models/flux-vae-tiny, made by make_flux_vae_tiny.py):
//! posterior mean (shift and scale applied), log-variance and decode, in
//! f32, from both key layouts.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use curate_gen::vae::{Layout, Vae};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/flux-vae-tiny")
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu)
        .expect("reference.safetensors")
}

/// max |a − b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap()
}

fn check(vae: &Vae) {
    let r = reference();
    for case in ["a", "b"] {
        let x = &r[&format!("input_{case}")];
        let post = vae.encode(x).unwrap();
        let want = &r[&format!("latent_{case}")];
        let e = rel_err(&post.mean, want);
        assert!(e < 1e-4, "latent_{case}: relative error {e}");
        let std = want
            .flatten_all()
            .unwrap()
            .var(0)
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            std > 1e-3,
            "the fixture's latents are not degenerate (std {std})"
        );
        let e = rel_err(&post.logvar, &r[&format!("logvar_{case}")]);
        assert!(e < 1e-4, "logvar_{case}: relative error {e}");
        let decoded = vae.decode(want).unwrap();
        let e = rel_err(&decoded, &r[&format!("decoded_{case}")]);
        assert!(e < 1e-4, "decoded_{case}: relative error {e}");
    }
    let decoded = vae.decode(&r["latent_rand"]).unwrap();
    let e = rel_err(&decoded, &r["decoded_rand"]);
    assert!(e < 1e-4, "decoded_rand: relative error {e}");
}

#[test]
fn bfl_layout_matches_diffusers() {
    let vae = Vae::load(&fixture().join("ae.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(vae.layout, Layout::Bfl);
    assert_eq!(vae.config.z_channels, 16);
    assert_eq!(vae.config.ch_mult.len(), 4);
    assert_eq!(vae.config.num_res_blocks, 2);
    check(&vae);
}

#[test]
fn diffusers_layout_matches_diffusers() {
    let path = curate_gen::vae::resolve_weights(&fixture().join("diffusers")).unwrap();
    let vae = Vae::load(&path, &Device::Cpu).unwrap();
    assert_eq!(vae.layout, Layout::Diffusers);
    check(&vae);
}

#[test]
fn a_wrong_file_names_the_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ae.safetensors");
    let mut tensors =
        candle_core::safetensors::load(fixture().join("ae.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("decoder.up.2.block.1.conv2.weight");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = Vae::load(&path, &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("decoder.up.2.block.1.conv2.weight"), "{err}");

    let other = dir.path().join("other.safetensors");
    let t = std::collections::HashMap::from([(
        "model.weight".to_string(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
    )]);
    candle_core::safetensors::save(&t, &other).unwrap();
    let err = Vae::load(&other, &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("encoder.conv_in.weight") && err.contains("model.weight"),
        "{err}"
    );

    let err = Vae::load(&dir.path().join("absent.safetensors"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("absent.safetensors") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn rgb_round_trip_through_the_pixel_range() {
    let crop: Vec<u8> = (0..(8 * 16 * 3)).map(|i| (i * 37 % 256) as u8).collect();
    let x = curate_gen::vae::from_rgb8(&[&crop], 8, 16, &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[1, 3, 8, 16]);
    let back = curate_gen::vae::to_rgb8(&x).unwrap();
    assert_eq!(back[0], crop);
}
