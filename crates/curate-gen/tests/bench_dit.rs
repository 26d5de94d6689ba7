//! Benchmarks (ignored tests, so they run in the dev profile that the
//! workspace optimises; run with
//! `cargo test -p curate-gen --test bench_dit -- --ignored --nocapture`):
//!
//! - `tiny_train_steps_per_s`: optimiser steps/s of the tiny config on the
//!   CPU (batch 4, 16×16 latents = 64 image tokens, 16 text tokens).
//! - `report_block_vs_torch`: one block of the report's width (1536, 24 heads,
//!   SwiGLU 4096) forward and forward+backward at 321 tokens; writes its
//!   weights, inputs and output to `$BENCH_DIT_DIR` (default
//!   target/bench-dit) for pipelines/tools/bench_dit_torch.py, which times
//!   the same block in PyTorch with the same weights and checks the output.
//!
//! Both print peak RSS (VmHWM).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use curate_gen::dit::{rope_tables, Block, DitConfig};
use curate_gen::rng::Rng;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn randn(rng: &mut Rng, shape: &[usize], std: f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(
        rng.normals_f32(n)
            .into_iter()
            .map(|x| x * std)
            .collect::<Vec<_>>(),
        shape,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
#[ignore]
fn tiny_train_steps_per_s() {
    let dev = Device::Cpu;
    let cfg =
        curate_gen::dit::load_config(&repo().join("pipelines/configs/dit-tiny.json")).unwrap();
    let tr = curate_gen::train::Trainable::new(&cfg, 0, &dev).unwrap();
    let opt_cfg: curate_gen::optim::OptimConfig =
        serde_json::from_str(r#"{"lr": 1e-3, "grad_clip": 1.0}"#).unwrap();
    let mut opt = curate_gen::optim::AdamW::new(opt_cfg, tr.vars.clone()).unwrap();
    let mut rng = Rng::new(0);
    let fm = curate_gen::cfm::FlowMatcher::new(0.01);
    let x1 = randn(&mut rng, &[4, 16, 16, 16], 1.0);
    let text = randn(&mut rng, &[4, 16, 32], 1.0);
    let mask = Tensor::ones((4, 16), DType::F32, &dev).unwrap();
    let mut step = || {
        let d = fm.draw(&mut rng, &x1).unwrap();
        let (xt, ut) = fm.location_and_flow(&x1, &d).unwrap();
        let v = tr.model.forward(&xt, &d.t, &text, &mask).unwrap();
        let loss = curate_gen::cfm::mse(&v, &ut).unwrap();
        let g = loss.backward().unwrap();
        opt.step(&g, 1e-3).unwrap();
    };
    for _ in 0..3 {
        step();
    }
    let n = 30;
    let t0 = Instant::now();
    for _ in 0..n {
        step();
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{{\"bench\": \"tiny_train\", \"params\": {}, \"threads\": {}, \"steps_per_s\": {:.2}, \"peak_rss_mib\": {:.0}}}",
        tr.num_params(),
        candle_core::utils::get_num_threads(),
        n as f64 / s,
        peak_rss_mib()
    );
}

#[test]
#[ignore]
fn report_block_vs_torch() {
    let dev = Device::Cpu;
    let mut cfg: DitConfig =
        curate_gen::dit::load_config(&repo().join("pipelines/configs/dit-report.json")).unwrap();
    cfg.depth = 1;
    cfg.heads = vec![24];
    let heads = 24;
    let (w, l, hp, wp) = (cfg.hidden_size, 64usize, 16usize, 16usize);
    let s = l + 1 + hp * wp;
    let mut rng = Rng::new(1);
    // Weights: every tensor N(0, 0.02), norms 1 + N(0, 0.1), adaln N(0, 0.02) (not zero, so every path counts).
    let vm = VarMap::new();
    let block = Block::new(&cfg, heads, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    let mut names: Vec<(String, candle_core::Var)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in &names {
        let t = if name.contains("norm") {
            (randn(&mut rng, var.dims(), 0.1) + 1.0).unwrap()
        } else {
            randn(&mut rng, var.dims(), 0.02)
        };
        var.set(&t).unwrap();
        weights.insert(format!("w.{name}"), t);
    }
    let x = randn(&mut rng, &[1, s, w], 1.0);
    let c_act = randn(&mut rng, &[1, w], 1.0);
    let rope = rope_tables(l + 1, hp, wp, w / heads, cfg.rope_theta, &dev).unwrap();
    let y = block.forward(&x, &c_act, &rope, None).unwrap();
    let dir = std::env::var("BENCH_DIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/bench-dit"));
    std::fs::create_dir_all(&dir).unwrap();
    weights.insert("x".into(), x.clone());
    weights.insert("c_act".into(), c_act.clone());
    weights.insert("y".into(), y.clone());
    candle_core::safetensors::save(&weights, dir.join("block.safetensors")).unwrap();

    let reps = 5;
    let t0 = Instant::now();
    for _ in 0..reps {
        block.forward(&x, &c_act, &rope, None).unwrap();
    }
    let fwd = t0.elapsed().as_secs_f64() / reps as f64;
    let xv = candle_core::Var::from_tensor(&x).unwrap();
    let t0 = Instant::now();
    for _ in 0..reps {
        let y = block.forward(xv.as_tensor(), &c_act, &rope, None).unwrap();
        let _g = y.sqr().unwrap().mean_all().unwrap().backward().unwrap();
    }
    let fb = t0.elapsed().as_secs_f64() / reps as f64;
    let out = format!(
        "{{\"bench\": \"report_block\", \"framework\": \"candle\", \"width\": {w}, \"heads\": {heads}, \"tokens\": {s}, \"threads\": {}, \"forward_ms\": {:.1}, \"forward_backward_ms\": {:.1}, \"peak_rss_mib\": {:.0}}}",
        candle_core::utils::get_num_threads(),
        fwd * 1e3,
        fb * 1e3,
        peak_rss_mib()
    );
    println!("{out}");
    std::fs::write(dir.join("candle.json"), out).unwrap();
    std::fs::write(
        dir.join("block_config.json"),
        serde_json::json!({"width": w, "heads": heads, "mlp_hidden": cfg.mlp_hidden, "text_tokens": l, "grid": [hp, wp], "rope_theta": cfg.rope_theta, "eps": cfg.norm_eps}).to_string(),
    )
    .unwrap();
}
