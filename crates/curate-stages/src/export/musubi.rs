//! `--format musubi`: musubi-tuner's latent cache for Z-Image, the
//! text-to-image architecture musubi trains on FLUX.1's VAE
//! (`ARCHITECTURE_Z_IMAGE = "zi"`). Beside each image `KEY.jpg` and its
//! caption `KEY.txt`, `KEY_WWWWxHHHH_zi.safetensors` (W×H the image's size)
//! holds `latents_1x{h}x{w}_float32` (C×h×w) with the metadata musubi's
//! `save_latent_cache_common` writes: `architecture`, `width`, `height`
//! (the original size) and `format_version`. musubi caches the VAE's raw
//! posterior mean (`zimage_cache_latents.py`: `posterior.mode()`) and
//! shifts and scales at training time, so the stored `(z − shift) × scale`
//! is unscaled back to `z`. A `dataset.toml` for `--dataset_config` names
//! the folder as image and cache directory; musubi's
//! `zimage_cache_text_encoder_outputs.py` then caches the captions.

use std::collections::HashMap;
use std::path::Path;

use curate_stage::{Result, StageError};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::kohya::{bucket_range, toml_str, write_card, TOML};
use super::latent_cache::{CacheFile, Latent, LatentsInfo};
use super::{is_image_file, ExportFormat, ExportSummary, Writes};

pub struct Musubi {
    pub info: LatentsInfo,
}

pub const ARCH: &str = "zi";
pub const ARCH_FULL: &str = "z_image";
pub const SUFFIX: &str = "_zi.safetensors";

impl CacheFile for Musubi {
    fn file_name(&self, key: &str, (w, h): (u32, u32)) -> String {
        format!("{key}_{w:04}x{h:04}{SUFFIX}")
    }

    fn encode(&self, l: &Latent<'_>) -> Result<Vec<u8>> {
        let [c, h, w] = l.shape;
        let raw: Vec<u8> = l
            .values
            .iter()
            .flat_map(|v| ((*v as f64 / l.scale + l.shift) as f32).to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::F32, vec![c, h, w], &raw).map_err(StageError::other)?;
        let meta = HashMap::from([
            ("architecture".to_string(), ARCH_FULL.to_string()),
            ("width".to_string(), l.original.0.to_string()),
            ("height".to_string(), l.original.1.to_string()),
            ("format_version".to_string(), "1.0.1".to_string()),
        ]);
        safetensors::serialize([(format!("latents_1x{h}x{w}_float32"), view)], Some(meta))
            .map_err(StageError::other)
    }
}

impl ExportFormat for Musubi {
    fn writes(&self) -> Writes<'_> {
        Writes::LatentCache(self)
    }

    fn owns(&self, name: &str) -> bool {
        name.ends_with(SUFFIX) || name.ends_with(".txt") || is_image_file(name) || name == TOML
    }

    fn finish(&self, out: &Path, _summary: &ExportSummary) -> Result<Vec<String>> {
        let dir = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
        let dir = toml_str(&dir.display().to_string());
        let side = self.info.stage as u32;
        let (lo, hi) = bucket_range(&self.info.buckets, side);
        let toml = format!(
            "# musubi-tuner --dataset_config for this export (curate export --format musubi, Z-Image).\n\
             # The latent cache is here; cache the text encoder outputs with\n\
             # zimage_cache_text_encoder_outputs.py before training. Buckets span {lo}..{hi} px.\n\
             [general]\nresolution = [{side}, {side}]\ncaption_extension = \".txt\"\nbatch_size = 1\n\
             enable_bucket = {}\nbucket_no_upscale = false\n\n\
             [[datasets]]\nimage_directory = {dir}\ncache_directory = {dir}\nnum_repeats = 1\n",
            self.info.buckets.len() > 1
        );
        write_card(out, TOML, &toml)?;
        Ok(vec![TOML.to_string()])
    }
}
