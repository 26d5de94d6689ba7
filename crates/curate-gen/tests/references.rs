//! curate-gen against recorded references: I-CFM against torchcfm
//! (fixtures/gen/cfm_reference.json) and the T5 encoder against
//! transformers' T5EncoderModel (fixtures/gen/t5-tiny); the DiT's head
//! schedule read back from the built model; the DiT's patchify, RoPE and one
//! whole block (forward and gradients) against torch/diffusers building
//! blocks; AdamW, its schedule and EMA against torch; the sampler's sigmas
//! against diffusers.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use curate_gen::cfm::{cpu_tensor, CfmDraws, FlowMatcher};
use curate_gen::dit::{Dit, DitConfig};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &[f32]) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn icfm_matches_torchcfm_for_the_same_draws() {
    let text = std::fs::read_to_string(repo().join("fixtures/gen/cfm_reference.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    for case in r["cases"].as_array().unwrap() {
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let sigma = case["sigma"].as_f64().unwrap();
        let x1 = cpu_tensor(&floats(&case["x1"]), &shape).unwrap();
        let draws = CfmDraws {
            t: cpu_tensor(&floats(&case["t"]), &shape[..1]).unwrap(),
            x0: cpu_tensor(&floats(&case["x0"]), &shape).unwrap(),
            eps: cpu_tensor(&floats(&case["eps"]), &shape).unwrap(),
        };
        let (xt, ut) = FlowMatcher::new(sigma)
            .location_and_flow(&x1, &draws)
            .unwrap();
        let dx = max_abs_diff(&xt, &floats(&case["xt"]));
        let du = max_abs_diff(&ut, &floats(&case["ut"]));
        assert!(
            dx < 1e-6 && du < 1e-6,
            "sigma {sigma}: x_t off by {dx}, u_t by {du}"
        );
    }
}

#[test]
fn icfm_draws_are_reproducible_from_the_rng_state() {
    let x1 = Tensor::ones((2, 16, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let fm = FlowMatcher::new(0.1);
    let mut a = curate_gen::rng::Rng::new(3);
    let mut b = curate_gen::rng::Rng::from_state(a.state());
    let (da, db) = (fm.draw(&mut a, &x1).unwrap(), fm.draw(&mut b, &x1).unwrap());
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v(&da.t), v(&db.t));
    assert_eq!(v(&da.eps), v(&db.eps));
    let t = v(&da.t);
    assert!(t.iter().all(|&t| (0.0..1.0).contains(&t)));
}

#[test]
fn t5_encoder_matches_transformers() {
    let dir = repo().join("fixtures/gen/t5-tiny");
    let enc = curate_gen::t5::T5Encoder::load(&dir, &Device::Cpu).unwrap();
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let texts: Vec<&str> = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let max = r["max_length"].as_u64().unwrap() as usize;
    let ids_ref: Vec<Vec<u32>> = r["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    for (t, want) in texts.iter().zip(&ids_ref) {
        let got = enc.tokenize(t, max).unwrap();
        let want: Vec<u32> = want.iter().copied().take_while(|&i| i != 0).collect();
        assert_eq!(got, want, "{t:?}");
    }
    let (hs, mask) = enc.encode(&texts, max).unwrap();
    let shape: Vec<usize> = r["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(hs.dims(), shape.as_slice());
    let want = floats(&r["last_hidden_state"]);
    let got: Vec<f32> = hs.flatten_all().unwrap().to_vec1().unwrap();
    let m: Vec<f32> = mask.flatten_all().unwrap().to_vec1().unwrap();
    let d = shape[2];
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if m[i / d] > 0.0 {
            worst = worst.max((g - w).abs() / (1.0 + w.abs()));
        }
    }
    assert!(
        worst < 1e-4,
        "T5 hidden states differ from transformers by {worst} (relative)"
    );
    // The per-caption cache gives the same rows as the padded batch.
    let mut cache = curate_gen::t5::TextCache::default();
    let (hc, mc) = cache.batch(&enc, &texts, max).unwrap();
    let diff = (hc.broadcast_mul(&mc.unsqueeze(2).unwrap()).unwrap()
        - hs.broadcast_mul(&mask.unsqueeze(2).unwrap()).unwrap())
    .unwrap()
    .abs()
    .unwrap()
    .max_all()
    .unwrap()
    .to_scalar::<f32>()
    .unwrap();
    assert!(diff < 1e-5, "cache differs by {diff}");

    // A cache bounded below one batch's captions evicts the oldest and
    // re-encodes them: the same rows, never more than its bound held after.
    let one = hc.dim(2).unwrap() * 4 * 2; // two tokens of f32 rows
    let mut small = curate_gen::t5::TextCache::with_capacity(one);
    for _ in 0..2 {
        let (hb, mb) = small.batch(&enc, &texts, max).unwrap();
        let d = (hb.broadcast_mul(&mb.unsqueeze(2).unwrap()).unwrap()
            - hc.broadcast_mul(&mc.unsqueeze(2).unwrap()).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert_eq!(d, 0.0, "a re-encoded caption differs");
        assert!(
            small.bytes() <= one,
            "{} bytes held, bound {one}",
            small.bytes()
        );
        assert!(small.len() < texts.len(), "nothing was evicted");
    }
}

fn tiny() -> DitConfig {
    curate_gen::dit::load_config(&repo().join("pipelines/configs/dit-tiny.json")).unwrap()
}

#[test]
fn per_block_head_counts_follow_the_schedule() {
    let cfg = tiny();
    let vm = VarMap::new();
    let model = Dit::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    assert_eq!(model.block_heads(), vec![8, 16, 24, 48]);
    let report =
        curate_gen::dit::load_config(&repo().join("pipelines/configs/dit-report.json")).unwrap();
    let heads = report.head_counts().unwrap();
    assert_eq!(heads.len(), 32);
    assert_eq!(&heads[..8], &[8; 8]);
    assert_eq!(&heads[8..16], &[16; 8]);
    assert_eq!(&heads[16..24], &[24; 8]);
    assert_eq!(&heads[24..], &[48; 8]);
    // An 8-block model with the same four groups: two blocks per group.
    let eight = DitConfig {
        depth: 8,
        ..cfg.clone()
    };
    let vm = VarMap::new();
    let m8 = Dit::new(
        &eight,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    assert_eq!(m8.block_heads(), vec![8, 8, 16, 16, 24, 24, 48, 48]);
}

#[test]
fn bad_head_schedules_are_refused_naming_block_width_and_heads() {
    let cfg = DitConfig {
        hidden_size: 96,
        ..tiny()
    };
    let err = Dit::new(
        &cfg,
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("block 1") && err.contains("width 96") && err.contains("16 heads"),
        "{err}"
    );
    let cfg = DitConfig {
        heads: vec![8, 16, 24],
        ..tiny()
    };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("3 groups") && err.contains("depth 4"), "{err}");
}

#[test]
fn forward_shapes_and_text_padding_is_masked() {
    let cfg = tiny();
    let dev = Device::Cpu;
    let tr = curate_gen::train::Trainable::new(&cfg, 1, &dev).unwrap();
    // Give every zero-initialised parameter a value so the output depends on the input.
    let mut rng = curate_gen::rng::Rng::new(5);
    for v in tr.vars.values() {
        let n = v.elem_count();
        let noise = Tensor::from_vec(rng.normals_f32(n), v.dims(), &dev).unwrap();
        v.set(&(v.as_tensor() + (noise * 0.05).unwrap()).unwrap())
            .unwrap();
    }
    let x = Tensor::from_vec(rng.normals_f32(2 * 16 * 4 * 6), (2, 16, 4, 6), &dev).unwrap();
    let t = Tensor::new(&[0.3f32, 0.7], &dev).unwrap();
    let text = Tensor::from_vec(rng.normals_f32(2 * 5 * 32), (2, 5, 32), &dev).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 0., 0.], [1., 1., 1., 1., 1.]], &dev).unwrap();
    let out = tr.model.forward(&x, &t, &text, &mask).unwrap();
    assert_eq!(out.dims(), &[2, 16, 4, 6]);
    // Changing padded text tokens of row 0 does not change its output.
    let text2 = text
        .slice_assign(
            &[0..1, 3..5, 0..32],
            &Tensor::ones((1, 2, 32), DType::F32, &dev).unwrap(),
        )
        .unwrap();
    let out2 = tr.model.forward(&x, &t, &text2, &mask).unwrap();
    let d0 = (out.get(0).unwrap() - out2.get(0).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d0 < 1e-5, "padding leaked into the output: {d0}");
    // Truncating the padding gives the same output too.
    let out3 = tr
        .model
        .forward(
            &x.narrow(0, 0, 1).unwrap(),
            &t.narrow(0, 0, 1).unwrap(),
            &text.narrow(0, 0, 1).unwrap().narrow(1, 0, 3).unwrap(),
            &mask.narrow(0, 0, 1).unwrap().narrow(1, 0, 3).unwrap(),
        )
        .unwrap();
    let d = (out.get(0).unwrap() - out3.get(0).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-4, "padding changes the output by {d}");
    // Patchify is a bijection.
    let p = curate_gen::dit::patchify(&x, 2).unwrap();
    assert_eq!(p.dims(), &[2, 6, 64]);
    let back = curate_gen::dit::unpatchify(&p, 16, 2, 3, 2).unwrap();
    assert_eq!(
        back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

fn read_ref(name: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("fixtures/gen").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Largest |a − b| / max(|b|, 1e-3) over the elements.
fn max_rel_diff(a: &Tensor, b: &[f32]) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
        .fold(0.0, f32::max)
}

#[test]
fn sampler_steps_equal_diffusers_flow_match_euler_with_its_shift() {
    let r = read_ref("optim_sampler_reference.json");
    let cases = r["flow_match_euler"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for c in cases {
        let (alpha, steps) = (c["shift"].as_f64().unwrap(), c["steps"].as_u64().unwrap());
        let want: Vec<f64> = c["sigmas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got = curate_gen::sample::sigmas(steps as usize, alpha);
        assert_eq!(got.len(), want.len(), "shift {alpha}, {steps} steps");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-7,
                "shift {alpha}, {steps} steps: {got:?} vs diffusers {want:?}"
            );
        }
        // The sampler's timesteps are t = 1 − σ (t = 0 the noise).
        let ts = curate_gen::sample::timesteps(steps as usize, alpha);
        assert!(ts
            .iter()
            .zip(&got)
            .all(|(t, s)| (t - (1.0 - s)).abs() < 1e-15));
    }
}

#[test]
fn adamw_with_groups_clipping_schedule_and_ema_equals_torch_for_20_steps() {
    use curate_gen::optim::{AdamW, OptimConfig};
    let r = read_ref("optim_sampler_reference.json");
    let a = &r["adamw"];
    let cfg: OptimConfig = serde_json::from_value(a["config"].clone()).unwrap();
    assert!(cfg.beta2 != 0.999 && cfg.eps != 1e-8 && cfg.weight_decay > 0.0);
    let total = a["total_steps"].as_u64().unwrap();
    let dev = Device::Cpu;
    let shape = |k: &str| -> Vec<usize> {
        a["shapes"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect()
    };
    let names: Vec<String> = a["shapes"].as_object().unwrap().keys().cloned().collect();
    let tensor = |k: &str, v: &Value| Tensor::from_vec(floats(v), shape(k), &dev).unwrap();
    let params: std::collections::BTreeMap<String, candle_core::Var> = names
        .iter()
        .map(|k| {
            let t = tensor(k, &a["initial"][k]);
            (k.clone(), candle_core::Var::from_tensor(&t).unwrap())
        })
        .collect();
    let mut opt = AdamW::new(cfg.clone(), params.clone()).unwrap();
    // torch decays every parameter outside the no-decay group, 1-D ones too.
    assert!(
        !opt.decays("blocks.0.norm1.weight")
            && opt.decays("final.weight")
            && opt.decays("t_embed.scale")
    );
    let steps = a["steps"].as_array().unwrap();
    assert_eq!(steps.len() as u64, total);
    for (i, s) in steps.iter().enumerate() {
        let lr = cfg.lr_at(i as u64, total);
        let want_lr = s["lr"].as_f64().unwrap();
        assert!(
            (lr - want_lr).abs() < 1e-12,
            "step {i}: lr {lr}, LambdaLR {want_lr}"
        );
        let mut loss = Tensor::new(0f32, &dev).unwrap();
        for k in &names {
            let p = params[k].as_tensor();
            let (c, d) = (tensor(k, &a["coef_c"][k]), tensor(k, &a["coef_d"][k]));
            let term = ((&c * p.sqr().unwrap()).unwrap() + (&d * p).unwrap()).unwrap();
            loss = (loss + term.sum_all().unwrap()).unwrap();
        }
        let grads = loss.backward().unwrap();
        let norm = opt.step(&grads, lr).unwrap();
        let want_norm = s["grad_norm"].as_f64().unwrap();
        assert!(
            ((norm - want_norm) / want_norm).abs() < 1e-5,
            "step {i}: grad norm {norm}, torch {want_norm}"
        );
        let ema = opt.ema.as_ref().unwrap();
        for (j, (k, p)) in opt.params.iter().enumerate() {
            let dp = max_rel_diff(p.as_tensor(), &floats(&s["params"][k]));
            let de = max_rel_diff(&ema[j], &floats(&s["ema"][k]));
            assert!(
                dp < 1e-4 && de < 1e-4,
                "step {i}, {k}: params off by {dp}, EMA by {de} (relative)"
            );
        }
    }
}

/// Patchify against torch's `pixel_unshuffle` (tokens in grid order) and
/// back; 2D RoPE tables against diffusers' `get_1d_rotary_pos_embed` per
/// axis, and the rotation against its `apply_rotary_emb` (rotate-half):
/// `fixtures/gen/dit_blocks_reference.json`.
#[test]
fn patchify_and_rope_equal_torch_pixel_unshuffle_and_diffusers_rotary_helpers() {
    let r = read_ref("dit_blocks_reference.json");
    let dev = Device::Cpu;
    for c in r["patchify"].as_array().unwrap() {
        let s: Vec<usize> = c["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let p = c["p"].as_u64().unwrap() as usize;
        let x = Tensor::from_vec(floats(&c["x"]), (s[0], s[1], s[2], s[3]), &dev).unwrap();
        let tokens = curate_gen::dit::patchify(&x, p).unwrap();
        assert_eq!(
            tokens.dims(),
            &[s[0], (s[2] / p) * (s[3] / p), s[1] * p * p]
        );
        assert_eq!(
            max_abs_diff(&tokens, &floats(&c["tokens"])),
            0.0,
            "{s:?} p {p}"
        );
        let back = curate_gen::dit::unpatchify(&tokens, s[1], s[2] / p, s[3] / p, p).unwrap();
        assert_eq!(max_abs_diff(&back, &floats(&c["x"])), 0.0);
    }
    let cases = r["rope"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for c in cases {
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let (prefix, h, w, hd) = (u("prefix"), u("h"), u("w"), u("hd"));
        let theta = c["theta"].as_f64().unwrap();
        let (cos, sin) = curate_gen::dit::rope_tables(prefix, h, w, hd, theta, &dev).unwrap();
        assert!(
            max_abs_diff(&cos, &floats(&c["cos"])) <= 1e-6,
            "cos {prefix} {h}×{w} hd {hd}"
        );
        assert!(
            max_abs_diff(&sin, &floats(&c["sin"])) <= 1e-6,
            "sin {prefix} {h}×{w} hd {hd}"
        );
        let s = prefix + h * w;
        let x = Tensor::from_vec(floats(&c["x"]), (2, 3, s, hd), &dev).unwrap();
        let rotated = curate_gen::dit::apply_rope(&x, &(cos, sin)).unwrap();
        assert!(max_rel_diff(&rotated, &floats(&c["rotated"])) <= 1e-5);
    }
}

/// `got` within 1e-4 of the largest |value| of the reference tensor `name`.
fn near_reference(t: &HashMap<String, Tensor>, got: &Tensor, name: &str) {
    let want: Vec<f32> = t[name].flatten_all().unwrap().to_vec1().unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(got, &want);
    assert!(
        diff <= 1e-4 * scale,
        "{name}: max |Δ| {diff} of max {scale}"
    );
}

/// Every one of the `count` parameters in `vm` has a gradient, near the
/// reference's `grad.NAME`.
fn every_gradient_near_reference(
    t: &HashMap<String, Tensor>,
    vm: &VarMap,
    grads: &candle_core::backprop::GradStore,
    count: usize,
) {
    let vars = vm.data().lock().unwrap();
    assert_eq!(vars.len(), count, "every parameter");
    for (name, var) in vars.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        near_reference(t, g, &format!("grad.{name}"));
    }
}

/// One DiT block against the same block put together from torch's modules
/// (`nn.RMSNorm`, `F.scaled_dot_product_attention` with the key mask,
/// diffusers' `apply_rotary_emb`, SwiGLU, adaLN): output, and for
/// loss = Σ out·R the gradient of every parameter and of the input, within
/// 1e-4 of each tensor's largest value
/// (`fixtures/gen/dit_block_reference.safetensors`).
#[test]
fn one_block_forward_and_every_gradient_equal_torch() {
    let dev = Device::Cpu;
    let path = repo().join("fixtures/gen/dit_block_reference.safetensors");
    let t = candle_core::safetensors::load(&path, &dev).unwrap();
    let mut cfg = tiny();
    cfg.hidden_size = 32;
    cfg.mlp_hidden = 64;
    cfg.norm_eps = 1e-6;
    let heads = 4;
    let mut vm = VarMap::new();
    let block =
        curate_gen::dit::Block::new(&cfg, heads, VarBuilder::from_varmap(&vm, DType::F32, &dev))
            .unwrap();
    vm.load(&path).unwrap();
    let x = candle_core::Var::from_tensor(&t["input.x"]).unwrap();
    let (b, s, _) = x.dims3().unwrap();
    let (text, grid) = (3, (2, 3));
    assert_eq!(s, text + 1 + grid.0 * grid.1);
    let rope =
        curate_gen::dit::rope_tables(text + 1, grid.0, grid.1, 32 / heads, 10000.0, &dev).unwrap();
    let bias = ((&t["input.keep"] - 1.0).unwrap() * 1e9)
        .unwrap()
        .reshape((b, 1, 1, s))
        .unwrap();
    let out = block
        .forward(x.as_tensor(), &t["input.c_act"], &rope, Some(&bias))
        .unwrap();
    near_reference(&t, &out, "output");
    let loss = (out * &t["input.R"]).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    near_reference(&t, grads.get(x.as_tensor()).unwrap(), "grad.input.x");
    every_gradient_near_reference(&t, &vm, &grads, 15);
}

/// The whole tiny DiT (two blocks of 2 and 4 heads: the multi-multi-head
/// schedule) against the same model from torch's and diffusers' parts
/// (`get_timestep_embedding`, `pixel_(un)shuffle`, the block above): the
/// velocity, and for loss = Σ v·R the gradient of every parameter, within
/// 1e-4 of each tensor's scale (`fixtures/gen/dit_model_reference.safetensors`).
#[test]
fn whole_tiny_dit_forward_and_every_gradient_equal_torch() {
    let dev = Device::Cpu;
    let path = repo().join("fixtures/gen/dit_model_reference.safetensors");
    let t = candle_core::safetensors::load(&path, &dev).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header = safetensors::SafeTensors::read_metadata(&bytes).unwrap().1;
    let config = &header.metadata().as_ref().unwrap()["config"];
    let cfg: DitConfig = serde_json::from_str(config).unwrap();
    assert_eq!(cfg.heads, vec![2, 4]);
    let mut vm = VarMap::new();
    let dit = Dit::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    vm.load(&path).unwrap();
    let out = dit
        .forward(
            &t["input.x"],
            &t["input.t"],
            &t["input.text"],
            &t["input.text_mask"],
        )
        .unwrap();
    near_reference(&t, &out, "output");
    let loss = (out * &t["input.R"]).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    every_gradient_near_reference(&t, &vm, &grads, 14 + 2 * 15);
}
