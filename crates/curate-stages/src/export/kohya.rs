//! `--format kohya`: kohya sd-scripts' FLUX latent cache. Beside each
//! image `KEY.jpg` and its caption `KEY.txt`, `KEY_WWWWxHHHH_flux.npz`
//! (W×H the image's size), a NumPy `.npz` as `np.savez` writes it, with the
//! keys of sd-scripts' multi-resolution cache (`library/strategy_flux.py`
//! always caches FLUX latents so): `latents_{h}x{w}` (float32 C×h×w, h×w the
//! latent size), `original_size_{h}x{w}` (int64 W, H) and `crop_ltrb_{h}x{w}`
//! (int64 left, top, right, bottom of the crop in the resized image). The
//! latents are sd-scripts' own scaling, `(z − 0.1159) × 0.3611`. A
//! `dataset.toml` for `--dataset_config` names the folder with the stage's
//! resolution and buckets.

use std::path::Path;

use curate_stage::{Context, Result};

use super::latent_cache::{CacheFile, Latent, LatentsInfo};
use super::{is_image_file, ExportFormat, ExportSummary, Writes};

pub struct Kohya {
    pub info: LatentsInfo,
}

pub const SUFFIX: &str = "_flux.npz";

impl CacheFile for Kohya {
    fn file_name(&self, key: &str, (w, h): (u32, u32)) -> String {
        format!("{key}_{w:04}x{h:04}{SUFFIX}")
    }

    fn encode(&self, l: &Latent<'_>) -> Result<Vec<u8>> {
        let [c, h, w] = l.shape;
        let sfx = format!("_{h}x{w}");
        let f32s: Vec<u8> = l.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let i64s =
            |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|x| (*x as i64).to_le_bytes()).collect() };
        Ok(npz(&[
            (format!("latents{sfx}"), npy("<f4", &[c, h, w], &f32s)),
            (
                format!("original_size{sfx}"),
                npy("<i8", &[2], &i64s(&[l.original.0, l.original.1])),
            ),
            (
                format!("crop_ltrb{sfx}"),
                npy("<i8", &[4], &i64s(&l.crop_ltrb)),
            ),
        ]))
    }
}

impl ExportFormat for Kohya {
    fn writes(&self) -> Writes<'_> {
        Writes::LatentCache(self)
    }

    fn owns(&self, name: &str) -> bool {
        name.ends_with(SUFFIX) || name.ends_with(".txt") || is_image_file(name) || name == TOML
    }

    fn finish(&self, out: &Path, _summary: &ExportSummary) -> Result<Vec<String>> {
        let dir = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
        let side = self.info.stage as u32;
        let (lo, hi) = bucket_range(&self.info.buckets, side);
        let bucketed = self.info.buckets.len() > 1;
        let toml = format!(
            "# sd-scripts --dataset_config for this export (curate export --format kohya).\n\
             # Latents are cached for curate's buckets: with these settings sd-scripts picks the same\n\
             # bucket for most images and encodes the others itself. Use --cache_latents_to_disk.\n\
             [general]\ncaption_extension = \".txt\"\nshuffle_caption = false\n\n\
             [[datasets]]\nresolution = {side}\nbatch_size = 1\nenable_bucket = {bucketed}\n\
             bucket_reso_steps = 64\nmin_bucket_reso = {lo}\nmax_bucket_reso = {hi}\n\n\
             [[datasets.subsets]]\nimage_dir = {}\nnum_repeats = 1\n",
            toml_str(&dir.display().to_string())
        );
        write_card(out, TOML, &toml)?;
        Ok(vec![TOML.to_string()])
    }
}

pub(crate) const TOML: &str = "dataset.toml";

/// Smallest and largest bucket side (the resolution when there is one bucket).
pub(crate) fn bucket_range(buckets: &[[u32; 2]], side: u32) -> (u32, u32) {
    let sides = buckets.iter().flat_map(|b| b.iter().copied());
    let lo = sides.clone().min().unwrap_or(side);
    let hi = sides.max().unwrap_or(side);
    (lo, hi)
}

/// A TOML basic string.
pub(crate) fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

pub(crate) fn write_card(out: &Path, name: &str, text: &str) -> Result<()> {
    let dest = out.join(name);
    let tmp = out.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

/// A NumPy `.npy` (format 1.0): the header dict padded so data starts at a
/// multiple of 64 bytes, as `numpy.lib.format` writes it.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// An uncompressed zip of `NAME.npy` members, as `np.savez` writes one.
fn npz(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    const DOS_DATE: u16 = (1 << 5) | 1; // 1980-01-01
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let name = format!("{name}.npy");
        let crc = crc32fast::hash(data);
        let offset = out.len() as u32;
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&0u16.to_le_bytes()); // stored
            v.extend_from_slice(&0u16.to_le_bytes()); // time
            v.extend_from_slice(&DOS_DATE.to_le_bytes());
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // made by
        common(&mut central);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_data_starts_on_a_64_byte_boundary() {
        let a = npy("<f4", &[16, 32, 32], &[0u8; 4]);
        let hl = u16::from_le_bytes([a[8], a[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        assert_eq!(a[10 + hl - 1], b'\n');
        let b = npy("<i8", &[2], &[0u8; 16]);
        let text = String::from_utf8_lossy(&b[10..74]);
        assert!(text.contains("'shape': (2,)"), "{text}");
    }
}
