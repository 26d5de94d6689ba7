//! Model input preprocessing equal to Hugging Face's (slow, PIL-based)
//! image processors: `CLIPImageProcessor` (shortest edge → centre crop),
//! `SiglipImageProcessor` and Florence-2's processor (squash to a fixed
//! size).
//!
//! The reference pipeline is: convert to RGB; resize the `uint8` image with
//! Pillow (`Image.resize(..., reducing_gap=None)`, separable fixed-point
//! convolution, horizontal pass then vertical, each rounded to `uint8`);
//! centre crop with `top = (H - h) // 2`, `left = (W - w) // 2` (HF's rule,
//! not torchvision's `round`); `x · rescale_factor` in float64 cast to
//! float32; `(x - mean) / std` in float32; CHW.
//!
//! The resize is Pillow's own algorithm ([`crate::pillow`]), bit for bit.
//! Normalisation is a 256-entry table per
//! channel computed with the reference's float operations, so it adds no
//! error of its own: the only difference from the reference is the JPEG
//! decoder's (IDCT and chroma upsampling round differently from
//! libjpeg-turbo's by a level or two).
//!
//! JPEGs are decoded with `jpeg-decoder`, the closest of the Rust decoders
//! to libjpeg-turbo. [`DecodeScale::Reduced`] decodes JPEGs at 1/2, 1/4 or 1/8 DCT scale when
//! the smaller picture still covers the resize target: most of the work of
//! a Flickr-sized photo → 224 px goes away, at the price of a small
//! difference from the reference (measured in `curate bench preprocess`).

use std::io::Cursor;

use crate::pillow::{self, Filter};
use image::metadata::Orientation;
use image::{DynamicImage, RgbImage};

use crate::{DecodeError, Format, Limits};

/// Pillow's resampling filters, by the integer HF configs store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    Nearest,
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Resample {
    /// PIL's enum values: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic.
    pub fn from_pil(v: i64) -> Option<Resample> {
        match v {
            0 => Some(Resample::Nearest),
            1 => Some(Resample::Lanczos),
            2 => Some(Resample::Bilinear),
            3 => Some(Resample::Bicubic),
            _ => None,
        }
    }

    fn filter(self) -> Option<Filter> {
        match self {
            Resample::Nearest => None,
            Resample::Bilinear => Some(Filter::Bilinear),
            Resample::Bicubic => Some(Filter::Bicubic),
            Resample::Lanczos => Some(Filter::Lanczos),
        }
    }
}

/// How the image is resized before the crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// The shorter side becomes this; the longer is `int(size * long / short)`.
    ShortestEdge(u32),
    /// Squash to exactly this height × width, ignoring the aspect ratio.
    Exact { height: u32, width: u32 },
    /// No resize.
    None,
}

/// Whether JPEGs may be decoded at reduced DCT scale (in manifests: `full`, `reduced`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeScale {
    /// Full-size decode, as the reference does (the default: exact).
    #[default]
    Full,
    /// The smallest of 1/8, 1/4, 1/2, 1 that still covers the resize target.
    Reduced,
}

impl std::str::FromStr for DecodeScale {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(DecodeScale::Full),
            "reduced" => Ok(DecodeScale::Reduced),
            _ => Err(format!("`{s}`: expected full or reduced")),
        }
    }
}

/// A model's pixel preprocessing. Serialised (for a stage's manifest) as
/// `{"resize": {"shortest_edge": 224}, "resample": "bicubic", "crop": [224, 224],
/// "rescale": 0.00392…, "normalize": {"mean": […], "std": […]}}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PixelSpec {
    pub resize: Resize,
    pub resample: Resample,
    /// Centre crop (height, width) after the resize.
    pub crop: Option<(u32, u32)>,
    pub rescale: Option<f64>,
    /// Per-channel mean and std; `None` skips normalisation.
    #[serde(serialize_with = "mean_std")]
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// `normalize` as `{"mean": [..], "std": [..]}` (or null), each value the
/// f64 of its shortest f32 decimal (`0.485`, not `0.48500001430511475`).
fn mean_std<S: serde::Serializer>(
    v: &Option<([f32; 3], [f32; 3])>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    struct MeanStd {
        mean: [f64; 3],
        std: [f64; 3],
    }
    let decimal = |x: [f32; 3]| x.map(|v| v.to_string().parse::<f64>().unwrap_or(v as f64));
    serde::Serialize::serialize(
        &v.as_ref().map(|(mean, std)| MeanStd {
            mean: decimal(*mean),
            std: decimal(*std),
        }),
        s,
    )
}

/// OpenAI CLIP's constants (`CLIPImageProcessor` defaults).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
// The decimals as CLIPImageProcessor's config writes them (rounded to f32 here).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A `preprocessor_config.json` that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("preprocessor config: `{key}`: expected {expected}, found {found}")]
pub struct ConfigError {
    pub key: String,
    pub expected: String,
    pub found: String,
}

impl PixelSpec {
    /// `CLIPImageProcessor`'s defaults: shortest edge 224, bicubic, crop 224, OpenAI mean/std.
    pub fn clip() -> PixelSpec {
        PixelSpec {
            resize: Resize::ShortestEdge(224),
            resample: Resample::Bicubic,
            crop: Some((224, 224)),
            rescale: Some(1.0 / 255.0),
            normalize: Some((CLIP_MEAN, CLIP_STD)),
        }
    }

    /// Squash to `size`×`size`, bicubic, with the given mean/std (SigLIP: 384, 0.5/0.5; Florence-2: 768, ImageNet).
    pub fn squash(size: u32, mean: [f32; 3], std: [f32; 3]) -> PixelSpec {
        PixelSpec {
            resize: Resize::Exact {
                height: size,
                width: size,
            },
            resample: Resample::Bicubic,
            crop: None,
            rescale: Some(1.0 / 255.0),
            normalize: Some((mean, std)),
        }
    }

    /// Reads a Hugging Face `preprocessor_config.json`; keys it lacks keep `defaults`' values.
    pub fn from_hf_json(
        json: &serde_json::Value,
        defaults: PixelSpec,
    ) -> Result<Self, ConfigError> {
        let err = |key: &str, expected: &str, found: &serde_json::Value| ConfigError {
            key: key.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        };
        let flag = |key: &str| -> Result<Option<bool>, ConfigError> {
            match json.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| err(key, "true or false", v)),
            }
        };
        let hw =
            |key: &str, v: &serde_json::Value| -> Result<(Option<u32>, u32, u32), ConfigError> {
                // (shortest_edge, height, width)
                if let Some(n) = v.as_u64() {
                    return Ok((None, n as u32, n as u32));
                }
                let get = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as u32);
                if let Some(s) = get("shortest_edge") {
                    return Ok((Some(s), s, s));
                }
                match (get("height"), get("width")) {
                    (Some(h), Some(w)) => Ok((None, h, w)),
                    _ => Err(err(
                        key,
                        "an integer, {\"shortest_edge\": n} or {\"height\": h, \"width\": w}",
                        v,
                    )),
                }
            };
        let mut spec = defaults;
        if let Some(v) = json.get("size").filter(|v| !v.is_null()) {
            let (short, h, w) = hw("size", v)?;
            spec.resize = match short {
                Some(s) => Resize::ShortestEdge(s),
                None => Resize::Exact {
                    height: h,
                    width: w,
                },
            };
        }
        if flag("do_resize")? == Some(false) {
            spec.resize = Resize::None;
        }
        if let Some(v) = json.get("resample").filter(|v| !v.is_null()) {
            spec.resample = v
                .as_i64()
                .and_then(Resample::from_pil)
                .ok_or_else(|| err("resample", "a PIL filter number 0..3", v))?;
        }
        if let Some(v) = json.get("crop_size").filter(|v| !v.is_null()) {
            let (_, h, w) = hw("crop_size", v)?;
            spec.crop = Some((h, w));
        }
        match flag("do_center_crop")? {
            Some(false) => spec.crop = None,
            Some(true) if spec.crop.is_none() => {
                return Err(err(
                    "do_center_crop",
                    "a crop_size alongside",
                    &json["do_center_crop"],
                ))
            }
            _ => {}
        }
        if let Some(v) = json.get("rescale_factor").filter(|v| !v.is_null()) {
            spec.rescale = Some(
                v.as_f64()
                    .ok_or_else(|| err("rescale_factor", "a number", v))?,
            );
        }
        if flag("do_rescale")? == Some(false) {
            spec.rescale = None;
        }
        let triple = |key: &str| -> Result<Option<[f32; 3]>, ConfigError> {
            match json.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => {
                    let list: Option<Vec<f32>> = v.as_array().map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_f64().map(|f| f as f32))
                            .collect()
                    });
                    match list.as_deref() {
                        Some([a, b, c]) => Ok(Some([*a, *b, *c])),
                        Some([a]) => Ok(Some([*a, *a, *a])),
                        _ => Err(err(key, "a list of 3 numbers", v)),
                    }
                }
            }
        };
        let (mut mean, mut std) = spec.normalize.unwrap_or((CLIP_MEAN, CLIP_STD));
        if let Some(m) = triple("image_mean")? {
            mean = m;
        }
        if let Some(s) = triple("image_std")? {
            std = s;
        }
        spec.normalize = Some((mean, std));
        if flag("do_normalize")? == Some(false) {
            spec.normalize = None;
        }
        Ok(spec)
    }

    /// Size (width, height) after the resize, before the crop.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        match self.resize {
            Resize::None => (width, height),
            Resize::Exact {
                height: h,
                width: w,
            } => (w, h),
            Resize::ShortestEdge(s) => {
                // transformers' get_resize_output_image_size(default_to_square=False).
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                let new_long = (s as f64 * long as f64 / short.max(1) as f64) as u32;
                if width <= height {
                    (s, new_long.max(1))
                } else {
                    (new_long.max(1), s)
                }
            }
        }
    }

    /// Output (height, width) of the model input, for a source of this size.
    pub fn output_hw(&self, width: u32, height: u32) -> (u32, u32) {
        match self.crop {
            Some(hw) => hw,
            None => {
                let (w, h) = self.resized_size(width, height);
                (h, w)
            }
        }
    }

    /// The fixed output (height, width), when it does not depend on the source.
    pub fn fixed_hw(&self) -> Option<(u32, u32)> {
        match (self.crop, self.resize) {
            (Some(hw), _) => Some(hw),
            (None, Resize::Exact { height, width }) => Some((height, width)),
            _ => None,
        }
    }

    /// The resized and cropped `uint8` picture (what the reference holds before rescaling).
    /// When the crop lies inside the resized picture only the cropped pixels are computed.
    pub fn resize_crop(&self, rgb: &RgbImage) -> RgbImage {
        let (sw, sh) = rgb.dimensions();
        let (rw, rh) = self.resized_size(sw, sh);
        let region = match self.crop {
            Some((ch, cw)) if cw <= rw && ch <= rh => ((rw - cw) / 2, (rh - ch) / 2, cw, ch),
            Some(_) => (0, 0, rw, rh), // padded below
            None => (0, 0, rw, rh),
        };
        let (w, h, nw, nh) = (sw as usize, sh as usize, rw as usize, rh as usize);
        let region_us = (
            region.0 as usize,
            region.1 as usize,
            region.2 as usize,
            region.3 as usize,
        );
        let data = if (rw, rh) == (sw, sh) {
            pillow::resize_region::<3>(rgb.as_raw(), w, h, nw, nh, region_us, Filter::Box)
        } else {
            match self.resample.filter() {
                Some(f) => pillow::resize_region::<3>(rgb.as_raw(), w, h, nw, nh, region_us, f),
                None => {
                    let full = nearest(rgb.as_raw(), w, h, nw, nh);
                    pillow::resize_region::<3>(&full, nw, nh, nw, nh, region_us, Filter::Box)
                }
            }
        };
        let out = RgbImage::from_raw(region.2, region.3, data).expect("region has w·h·3 bytes");
        match self.crop {
            Some((ch, cw)) if (cw, ch) != (region.2, region.3) => centre_crop(&out, ch, cw),
            _ => out,
        }
    }

    /// The lookup tables from a `uint8` value to the normalised float, per channel.
    pub fn tables(&self) -> [[f32; 256]; 3] {
        let mut t = [[0f32; 256]; 3];
        for (c, table) in t.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                // numpy: (uint8 as float64 · scale) as float32, then (x − mean) / std in float32.
                let mut x = match self.rescale {
                    Some(s) => (v as f64 * s) as f32,
                    None => v as f32,
                };
                if let Some((mean, std)) = self.normalize {
                    x = (x - mean[c]) / std[c];
                }
                *out = x;
            }
        }
        t
    }

    /// Writes `img` (already resized and cropped) as CHW floats into `out`.
    pub fn to_chw(img: &RgbImage, tables: &[[f32; 256]; 3], out: &mut [f32]) {
        let (w, h) = img.dimensions();
        let plane = (w * h) as usize;
        assert_eq!(out.len(), 3 * plane, "output buffer is 3·h·w floats");
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            r[i] = tables[0][px[0] as usize];
            g[i] = tables[1][px[1] as usize];
            b[i] = tables[2][px[2] as usize];
        }
    }
}

/// Pillow's NEAREST: the source pixel under each output pixel's centre.
fn nearest(src: &[u8], w: usize, h: usize, nw: usize, nh: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(nw * nh * 3);
    for y in 0..nh {
        let sy = (((y as f64 + 0.5) * h as f64 / nh as f64) as usize).min(h - 1);
        for x in 0..nw {
            let sx = (((x as f64 + 0.5) * w as f64 / nw as f64) as usize).min(w - 1);
            out.extend_from_slice(&src[(sy * w + sx) * 3..(sy * w + sx) * 3 + 3]);
        }
    }
    out
}

/// HF's `center_crop`: `top = (H − h) // 2`, `left = (W − w) // 2`; a picture
/// smaller than the crop is padded with zeros around it.
pub fn centre_crop(img: &RgbImage, ch: u32, cw: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (cw, ch) {
        return img.clone();
    }
    let mut out = RgbImage::new(cw, ch);
    // Offsets of the crop in the source (may be negative: padding).
    let top = (h as i64 - ch as i64).div_euclid(2);
    let left = (w as i64 - cw as i64).div_euclid(2);
    for y in 0..ch as i64 {
        let sy = y + top;
        if sy < 0 || sy >= h as i64 {
            continue;
        }
        let x0 = left.max(0);
        let x1 = (left + cw as i64).min(w as i64);
        if x1 <= x0 {
            continue;
        }
        let src = &img.as_raw()[((sy as usize * w as usize) + x0 as usize) * 3
            ..((sy as usize * w as usize) + x1 as usize) * 3];
        let dx = (x0 - left) as usize;
        let dst_row = &mut out.as_mut()[(y as usize * cw as usize + dx) * 3..];
        dst_row[..src.len()].copy_from_slice(src);
    }
    out
}

/// A decoded picture ready for [`PixelSpec::resize_crop`], and the facts about its source.
pub struct Loaded {
    pub rgb: RgbImage,
    /// The source's size after orientation (before any reduced-scale decode).
    pub source_width: u32,
    pub source_height: u32,
    /// 1, 2, 4 or 8: the DCT reduction used.
    pub reduction: u32,
    /// Which decoder made the pixels: `libjpeg-turbo`, `jpeg-decoder` or `image`.
    pub decoder: &'static str,
}

/// Decodes `bytes` to upright RGB for `spec`, at reduced DCT scale when allowed and possible.
pub fn load_rgb(
    bytes: &[u8],
    limits: &Limits,
    spec: &PixelSpec,
    scale: DecodeScale,
) -> Result<Loaded, DecodeError> {
    load_rgb_for(bytes, limits, scale, &|w, h| spec.resized_size(w, h))
}

/// Decodes `bytes` to upright RGB that will be resized to `target(width, height)`
/// (of the upright source), at reduced DCT scale when allowed and the reduced
/// picture still covers the target.
pub fn load_rgb_for(
    bytes: &[u8],
    limits: &Limits,
    scale: DecodeScale,
    target: &dyn Fn(u32, u32) -> (u32, u32),
) -> Result<Loaded, DecodeError> {
    if crate::detect_format(bytes)? == Format::Jpeg {
        if let Some(loaded) = load_jpeg(bytes, limits, target, scale)? {
            return Ok(loaded);
        }
    }
    let decoded = crate::decode(bytes, limits)?;
    let rgb = crate::to_rgb8(&decoded.image);
    Ok(Loaded {
        source_width: rgb.width(),
        source_height: rgb.height(),
        rgb,
        reduction: 1,
        decoder: "image",
    })
}

/// JPEG through `jpeg-decoder`, whose output is closer to libjpeg-turbo's
/// (Pillow's decoder) than zune-jpeg's: on the fixture photos at most 4
/// levels apart after the resize, 0.03–0.16 on average, against up to 8
/// and 0.42 for zune-jpeg. With [`DecodeScale::Reduced`], at the largest
/// DCT reduction whose output still covers the resize target in both
/// directions. `None` when the picture is not plain RGB/grey (CMYK): the
/// caller then decodes with the general decoder.
fn load_jpeg(
    bytes: &[u8],
    limits: &Limits,
    target: &dyn Fn(u32, u32) -> (u32, u32),
    scale: DecodeScale,
) -> Result<Option<Loaded>, DecodeError> {
    let header = crate::inspect_header(bytes, limits)?;
    if !matches!(header.mode, "rgb8" | "l8") {
        return Ok(None);
    }
    let (ow, oh) = (header.width, header.height); // after orientation
    let (tw, th) = target(ow, oh);
    let swapped = header.orientation >= 5; // orientations 5..8 transpose
    let (sw, sh) = if swapped { (oh, ow) } else { (ow, oh) };
    let (tsw, tsh) = if swapped { (th, tw) } else { (tw, th) };
    let mut reduction = 1;
    if scale == DecodeScale::Reduced {
        for r in [8u32, 4, 2] {
            if sw.div_ceil(r) >= tsw && sh.div_ceil(r) >= tsh {
                reduction = r;
                break;
            }
        }
    }
    let (image, decoder) = match crate::turbo::decode(bytes, reduction) {
        Some(Ok(p)) => (
            RgbImage::from_raw(p.width, p.height, p.rgb).map(DynamicImage::ImageRgb8),
            "libjpeg-turbo",
        ),
        Some(Err(detail)) => {
            let truncated = crate::jpeg_is_truncated(bytes) || detail.contains("Premature end");
            return Err(if truncated {
                DecodeError::Truncated {
                    format: "jpeg",
                    detail,
                }
            } else {
                DecodeError::Undecodable {
                    detail: format!("jpeg: {detail}"),
                }
            });
        }
        None => (
            decode_jpeg_decoder(bytes, limits, reduction)?,
            "jpeg-decoder",
        ),
    };
    if crate::jpeg_is_truncated(bytes) {
        return Err(DecodeError::Truncated {
            format: "jpeg",
            detail: "no end-of-image marker after the last scan".into(),
        });
    }
    let Some(mut image) = image else {
        return Err(DecodeError::Undecodable {
            detail: "jpeg: decoder returned a buffer of the wrong size".into(),
        });
    };
    if let Some(o) = Orientation::from_exif(header.orientation) {
        image.apply_orientation(o);
    }
    Ok(Some(Loaded {
        rgb: image.to_rgb8(),
        source_width: ow,
        source_height: oh,
        reduction,
        decoder,
    }))
}

/// `jpeg-decoder` at 1/`reduction` DCT scale; `None` inside when the pixel format is not RGB/grey.
fn decode_jpeg_decoder(
    bytes: &[u8],
    limits: &Limits,
    reduction: u32,
) -> Result<Option<DynamicImage>, DecodeError> {
    let undecodable = |e: jpeg_decoder::Error| DecodeError::Undecodable {
        detail: format!("jpeg: {e}"),
    };
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    d.set_max_decoding_buffer_size(limits.max_alloc as usize);
    d.read_info().map_err(undecodable)?;
    let info = d.info().ok_or_else(|| DecodeError::Undecodable {
        detail: "jpeg: no frame header".into(),
    })?;
    let (dw, dh) = d
        .scale(
            (info.width as u32).div_ceil(reduction) as u16,
            (info.height as u32).div_ceil(reduction) as u16,
        )
        .map_err(undecodable)?;
    let pixels = d.decode().map_err(undecodable)?;
    let (dw, dh) = (dw as u32, dh as u32);
    Ok(match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            RgbImage::from_raw(dw, dh, pixels).map(DynamicImage::ImageRgb8)
        }
        jpeg_decoder::PixelFormat::L8 => {
            image::GrayImage::from_raw(dw, dh, pixels).map(DynamicImage::ImageLuma8)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_is_structured_json_in_manifests() {
        let clip = serde_json::to_value(PixelSpec::clip()).unwrap();
        assert_eq!(clip["resize"], serde_json::json!({"shortest_edge": 224}));
        assert_eq!(clip["resample"], "bicubic");
        assert_eq!(clip["crop"], serde_json::json!([224, 224]));
        assert_eq!(clip["normalize"]["mean"].as_array().unwrap().len(), 3);
        let imagenet = serde_json::to_value(PixelSpec::squash(768, IMAGENET_MEAN, IMAGENET_STD));
        assert_eq!(
            imagenet.unwrap()["normalize"]["mean"],
            serde_json::json!([0.485, 0.456, 0.406])
        );
        assert!(clip["normalize"]["std"].is_array());
        let squash = serde_json::to_value(PixelSpec::squash(384, [0.5; 3], [0.5; 3])).unwrap();
        assert_eq!(
            squash["resize"],
            serde_json::json!({"exact": {"height": 384, "width": 384}})
        );
        assert!(squash["crop"].is_null());
        assert_eq!(
            serde_json::to_value(DecodeScale::Reduced).unwrap(),
            "reduced"
        );
        assert_eq!(serde_json::to_value(DecodeScale::Full).unwrap(), "full");
    }
}
