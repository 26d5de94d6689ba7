//! Loading VAE weights: either key layout (Black Forest Labs' or
//! diffusers'), the architecture inferred from the tensor shapes, and a
//! check that every tensor the architecture needs is there.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::{Layout, VaeConfig};
use crate::{GenError, Result};

pub(super) fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(GenError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "VAE weights not found (expected FLUX's ae.safetensors or a diffusers AutoencoderKL diffusion_pytorch_model.safetensors)",
            ),
        });
    }
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| GenError::Safetensors {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Strips a known prefix and renames diffusers keys to BFL's.
pub(super) fn to_bfl(
    path: &Path,
    tensors: HashMap<String, Tensor>,
) -> Result<(Layout, HashMap<String, Tensor>)> {
    let prefix = ["", "vae.", "first_stage_model.", "ae."]
        .into_iter()
        .find(|p| tensors.contains_key(&format!("{p}encoder.conv_in.weight")))
        .ok_or_else(|| GenError::MissingTensor {
            path: path.to_path_buf(),
            name: "encoder.conv_in.weight".into(),
            what: "the FLUX VAE (BFL or diffusers layout)".into(),
            found: sample_keys(&tensors),
        })?;
    let stripped: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v)))
        .collect();
    if stripped.contains_key("encoder.down.0.block.0.conv1.weight") {
        return Ok((Layout::Bfl, stripped));
    }
    if !stripped.contains_key("encoder.down_blocks.0.resnets.0.conv1.weight") {
        return Err(GenError::MissingTensor {
            path: path.to_path_buf(),
            name: format!(
                "{prefix}encoder.down.0.block.0.conv1.weight (BFL) or {prefix}encoder.down_blocks.0.resnets.0.conv1.weight (diffusers)"
            ),
            what: "the FLUX VAE".into(),
            found: sample_keys(&stripped),
        });
    }
    let levels = (0..)
        .take_while(|i| {
            stripped.contains_key(&format!("decoder.up_blocks.{i}.resnets.0.conv1.weight"))
        })
        .count();
    let mut out = HashMap::new();
    for (k, v) in stripped {
        let (name, v) = diffusers_to_bfl(&k, v, levels)?;
        out.insert(name, v);
    }
    Ok((Layout::Diffusers, out))
}

/// One diffusers key in BFL's naming (attention projections become 1×1 convs).
fn diffusers_to_bfl(key: &str, v: Tensor, levels: usize) -> Result<(String, Tensor)> {
    let parts: Vec<&str> = key.split('.').collect();
    let rest = |n: usize| parts[n..].join(".");
    let resnet = |s: &str| s.replace("conv_shortcut", "nin_shortcut");
    let name = match parts.as_slice() {
        [side, "down_blocks", i, "resnets", j, ..] => {
            format!("{side}.down.{i}.block.{j}.{}", resnet(&rest(5)))
        }
        [side, "down_blocks", i, "downsamplers", "0", ..] => {
            format!("{side}.down.{i}.downsample.{}", rest(5))
        }
        [side, "up_blocks", k, "resnets", j, ..] => {
            let i = levels - 1 - k.parse::<usize>().unwrap_or(0);
            format!("{side}.up.{i}.block.{j}.{}", resnet(&rest(5)))
        }
        [side, "up_blocks", k, "upsamplers", "0", ..] => {
            let i = levels - 1 - k.parse::<usize>().unwrap_or(0);
            format!("{side}.up.{i}.upsample.{}", rest(5))
        }
        [side, "mid_block", "resnets", j, ..] => {
            let b = if *j == "0" { "block_1" } else { "block_2" };
            format!("{side}.mid.{b}.{}", resnet(&rest(4)))
        }
        [side, "mid_block", "attentions", "0", proj, ..] => {
            let (to, n) = match *proj {
                "group_norm" => ("norm", 5),
                "to_q" => ("q", 5),
                "to_k" => ("k", 5),
                "to_v" => ("v", 5),
                "to_out" => ("proj_out", 6),
                other => (other, 5),
            };
            let name = format!("{side}.mid.attn_1.{to}.{}", rest(n));
            let v = if to != "norm" && v.rank() == 2 {
                let (o, i) = v.dims2()?;
                v.reshape((o, i, 1, 1))?
            } else {
                v
            };
            return Ok((name, v));
        }
        [side, "conv_norm_out", ..] => format!("{side}.norm_out.{}", rest(2)),
        _ => key.to_string(),
    };
    Ok((name, v))
}

fn sample_keys(tensors: &HashMap<String, Tensor>) -> String {
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let n = keys.len();
    let mut s = keys
        .into_iter()
        .take(6)
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if n > 6 {
        s.push_str(&format!(" … ({n} tensors)"));
    }
    if n == 0 {
        s = "no tensors".into();
    }
    s
}

pub(super) fn infer_config(path: &Path, t: &HashMap<String, Tensor>) -> Result<VaeConfig> {
    let dims = |name: &str| -> Result<Vec<usize>> {
        t.get(name)
            .map(|v| v.dims().to_vec())
            .ok_or_else(|| GenError::MissingTensor {
                path: path.to_path_buf(),
                name: name.into(),
                what: "the FLUX VAE".into(),
                found: sample_keys(t),
            })
    };
    let conv_in = dims("encoder.conv_in.weight")?;
    let (ch, in_channels) = (conv_in[0], conv_in[1]);
    let levels = (0..)
        .take_while(|i| t.contains_key(&format!("encoder.down.{i}.block.0.conv1.weight")))
        .count();
    let num_res_blocks = (0..)
        .take_while(|j| t.contains_key(&format!("encoder.down.0.block.{j}.conv1.weight")))
        .count();
    let mut ch_mult = Vec::new();
    for i in 0..levels {
        let out = dims(&format!("encoder.down.{i}.block.0.conv1.weight"))?[0];
        if ch == 0 || out % ch != 0 {
            return Err(GenError::Config(format!(
                "{}: encoder.down.{i} has {out} channels, not a multiple of conv_in's {ch}",
                path.display()
            )));
        }
        ch_mult.push(out / ch);
    }
    let z2 = dims("encoder.conv_out.weight")?[0];
    let out_channels = dims("decoder.conv_out.weight")?[0];
    let cfg = VaeConfig {
        in_channels,
        out_channels,
        ch,
        ch_mult,
        num_res_blocks,
        z_channels: z2 / 2,
    };
    if levels == 0 || num_res_blocks == 0 || z2 % 2 != 0 {
        return Err(GenError::Config(format!(
            "{}: not a FLUX-style VAE: read {cfg:?}",
            path.display()
        )));
    }
    Ok(cfg)
}

/// The tensors an architecture needs, with their shapes.
#[derive(Default)]
struct Wanted(Vec<(String, Vec<usize>)>);

impl Wanted {
    fn conv(&mut self, name: &str, cin: usize, cout: usize, k: usize) {
        self.0
            .push((format!("{name}.weight"), vec![cout, cin, k, k]));
        self.0.push((format!("{name}.bias"), vec![cout]));
    }

    fn norm(&mut self, name: &str, c: usize) {
        self.0.push((format!("{name}.weight"), vec![c]));
        self.0.push((format!("{name}.bias"), vec![c]));
    }

    fn resnet(&mut self, p: &str, cin: usize, cout: usize) {
        self.norm(&format!("{p}.norm1"), cin);
        self.conv(&format!("{p}.conv1"), cin, cout, 3);
        self.norm(&format!("{p}.norm2"), cout);
        self.conv(&format!("{p}.conv2"), cout, cout, 3);
        if cin != cout {
            self.conv(&format!("{p}.nin_shortcut"), cin, cout, 1);
        }
    }

    fn mid(&mut self, p: &str, c: usize) {
        self.resnet(&format!("{p}.mid.block_1"), c, c);
        self.resnet(&format!("{p}.mid.block_2"), c, c);
        self.norm(&format!("{p}.mid.attn_1.norm"), c);
        for n in ["q", "k", "v", "proj_out"] {
            self.conv(&format!("{p}.mid.attn_1.{n}"), c, c, 1);
        }
    }

    fn of(cfg: &VaeConfig) -> Wanted {
        let mut w = Wanted::default();
        w.conv("encoder.conv_in", cfg.in_channels, cfg.ch, 3);
        let mut block_in = cfg.ch;
        for (i, m) in cfg.ch_mult.iter().enumerate() {
            for j in 0..cfg.num_res_blocks {
                w.resnet(&format!("encoder.down.{i}.block.{j}"), block_in, cfg.ch * m);
                block_in = cfg.ch * m;
            }
            if i + 1 < cfg.ch_mult.len() {
                w.conv(
                    &format!("encoder.down.{i}.downsample.conv"),
                    block_in,
                    block_in,
                    3,
                );
            }
        }
        w.mid("encoder", block_in);
        w.norm("encoder.norm_out", block_in);
        w.conv("encoder.conv_out", block_in, 2 * cfg.z_channels, 3);
        let levels = cfg.ch_mult.len();
        let mut block_in = cfg.ch * cfg.ch_mult[levels - 1];
        w.conv("decoder.conv_in", cfg.z_channels, block_in, 3);
        w.mid("decoder", block_in);
        for i in (0..levels).rev() {
            for j in 0..=cfg.num_res_blocks {
                w.resnet(
                    &format!("decoder.up.{i}.block.{j}"),
                    block_in,
                    cfg.ch * cfg.ch_mult[i],
                );
                block_in = cfg.ch * cfg.ch_mult[i];
            }
            if i != 0 {
                w.conv(
                    &format!("decoder.up.{i}.upsample.conv"),
                    block_in,
                    block_in,
                    3,
                );
            }
        }
        w.norm("decoder.norm_out", block_in);
        w.conv("decoder.conv_out", block_in, cfg.out_channels, 3);
        w
    }
}

/// Every tensor the architecture needs, with its shape, so a wrong file
/// fails with the name and shape instead of deep inside a layer.
pub(super) fn check_tensors(
    path: &Path,
    cfg: &VaeConfig,
    t: &HashMap<String, Tensor>,
) -> Result<()> {
    for (name, shape) in Wanted::of(cfg).0 {
        match t.get(&name) {
            None => {
                return Err(GenError::MissingTensor {
                    path: path.to_path_buf(),
                    name,
                    what: format!("the VAE read off the file ({cfg:?})"),
                    found: sample_keys(t),
                })
            }
            Some(v) if v.dims() != shape.as_slice() => {
                return Err(GenError::BadShape {
                    path: path.to_path_buf(),
                    name,
                    expected: format!("{shape:?}"),
                    found: v.dims().to_vec(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}
