//! Image decoding for curate: formats, decompression-bomb limits, EXIF
//! orientation, colour normalisation to upright 8-bit RGB.
//!
//! Every failure is classified with a short machine-readable reason
//! ([`DecodeError::reason`]) so a stage records it and goes on.

use std::io::Cursor;

pub mod buckets;
pub mod pillow;
pub mod preprocess;
pub mod turbo;

pub use image;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

/// Limits that stop a decompression bomb before it allocates.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest width × height accepted (Pillow refuses above 178,956,970).
    pub max_pixels: u64,
    /// Largest single allocation the decoder may make, in bytes.
    pub max_alloc: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 178_956_970,
            max_alloc: 2 << 30,
        }
    }
}

/// Container formats curate accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    Gif,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Webp => "webp",
            Format::Gif => "gif",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Format::Jpeg => ImageFormat::Jpeg,
            Format::Png => ImageFormat::Png,
            Format::Webp => ImageFormat::WebP,
            Format::Gif => ImageFormat::Gif,
        }
    }

    /// File extensions (lowercase) that name this format.
    pub fn from_extension(ext: &str) -> Option<Format> {
        match ext.to_ascii_lowercase().as_str() {
            "jpg" | "jpeg" | "jpe" | "jfif" => Some(Format::Jpeg),
            "png" => Some(Format::Png),
            "webp" => Some(Format::Webp),
            "gif" => Some(Format::Gif),
            _ => None,
        }
    }
}

/// Why an image could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("zero-byte file")]
    Empty,
    #[error("{format} data ends early: {detail}")]
    Truncated {
        format: &'static str,
        detail: String,
    },
    #[error("not a decodable image: {detail}")]
    Undecodable { detail: String },
    #[error("{width}×{height} = {pixels} pixels exceeds the limit of {max_pixels} (decompression bomb?)", pixels = *width as u64 * *height as u64)]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("decoder refused to allocate: {detail}")]
    AllocLimit { detail: String },
    #[error("{format} images are not accepted (jpeg, png, webp, gif are)")]
    Unsupported { format: String },
}

impl DecodeError {
    /// The short reason recorded in shards.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::Undecodable { .. } => "undecodable",
            DecodeError::TooLarge { .. } | DecodeError::AllocLimit { .. } => "too_large",
            DecodeError::Unsupported { .. } => "unsupported_format",
        }
    }
}

/// A decoded image, upright.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub format: Format,
    /// Colour mode of the source: rgb8, rgba8, l8, la8, rgb16, rgba16, l16, la16, cmyk8, p8, rgb32f, rgba32f.
    pub mode: &'static str,
    /// EXIF orientation found (1..8) and already applied to `image`.
    pub orientation: u8,
    pub image: DynamicImage,
}

impl Decoded {
    pub fn width(&self) -> u32 {
        self.image.width()
    }
    pub fn height(&self) -> u32 {
        self.image.height()
    }
    pub fn has_alpha(&self) -> bool {
        self.image.color().has_alpha()
    }
    /// True when the source bytes can be used as they are by any consumer:
    /// a JPEG/PNG/WebP in 8-bit RGB or grey, no alpha, no rotation.
    pub fn is_plain(&self) -> bool {
        matches!(self.format, Format::Jpeg | Format::Png | Format::Webp)
            && matches!(self.mode, "rgb8" | "l8")
            && self.orientation == 1
    }
}

/// What the headers say, after a structural check of the whole file.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    pub format: Format,
    pub mode: &'static str,
    pub orientation: u8,
    /// After orientation.
    pub width: u32,
    pub height: u32,
}

impl Inspected {
    /// As [`Decoded::is_plain`].
    pub fn is_plain(&self) -> bool {
        matches!(self.format, Format::Jpeg | Format::Png | Format::Webp)
            && matches!(self.mode, "rgb8" | "l8")
            && self.orientation == 1
    }
}

/// Checks an image without decoding its pixels: headers (dimensions,
/// colour mode, EXIF orientation, bomb limits) and the container's
/// structure: JPEG marker sequence and end-of-image after the last scan,
/// PNG chunk CRCs and IEND, the WebP RIFF length, the GIF trailer. It
/// catches truncation and most corruption at memory speed; a bit flip
/// inside JPEG entropy-coded data needs [`decode`].
pub fn inspect(bytes: &[u8], limits: &Limits) -> Result<Inspected, DecodeError> {
    let format = detect_format(bytes)?;
    let truncated = |detail: &str| DecodeError::Truncated {
        format: format.as_str(),
        detail: detail.to_string(),
    };
    let corrupt = |detail: String| DecodeError::Undecodable { detail };
    match format {
        Format::Jpeg => {
            if jpeg_is_truncated(bytes) {
                return Err(truncated("no end-of-image marker after the last scan"));
            }
            jpeg_check_markers(bytes).map_err(corrupt)?;
        }
        Format::Png => {
            png_check_chunks(bytes).map_err(|(t, d)| if t { truncated(&d) } else { corrupt(d) })?
        }
        Format::Webp => {
            let declared = u32::from_le_bytes(
                bytes
                    .get(4..8)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 4]),
            ) as usize
                + 8;
            if declared > bytes.len() {
                return Err(truncated(&format!(
                    "RIFF declares {declared} bytes, file has {}",
                    bytes.len()
                )));
            }
        }
        Format::Gif => {
            if bytes.iter().rev().find(|&&b| b != 0) != Some(&0x3B) {
                return Err(truncated("no GIF trailer"));
            }
        }
    }
    inspect_header(bytes, limits)
}

/// The header facts of [`inspect`] without its structural checks.
pub(crate) fn inspect_header(bytes: &[u8], limits: &Limits) -> Result<Inspected, DecodeError> {
    let format = detect_format(bytes)?;
    let (decoder, Header { mode, orientation }) = open_decoder(bytes, format, limits)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(DecodeError::Undecodable {
            detail: format!("{w}×{h} image"),
        });
    }
    let (width, height) = if orientation >= 5 { (h, w) } else { (w, h) };
    Ok(Inspected {
        format,
        mode,
        orientation,
        width,
        height,
    })
}

/// Decodes all of a JPEG's entropy-coded data at 1/8 DCT scale: every
/// Huffman code is read (so corruption and truncation inside the scans are
/// found as by a full decode), but no full-size IDCT, upsampling or colour
/// conversion is done. About twice as fast as a full decode.
pub fn verify_jpeg_scaled(bytes: &[u8], limits: &Limits) -> Result<(), DecodeError> {
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    d.set_max_decoding_buffer_size(limits.max_alloc as usize);
    let undecodable = |e: jpeg_decoder::Error| DecodeError::Undecodable {
        detail: format!("jpeg: {e}"),
    };
    d.read_info().map_err(undecodable)?;
    let info = d.info().ok_or_else(|| DecodeError::Undecodable {
        detail: "jpeg: no frame header".into(),
    })?;
    if info.width as u64 * info.height as u64 > limits.max_pixels {
        return Err(DecodeError::TooLarge {
            width: info.width as u32,
            height: info.height as u32,
            max_pixels: limits.max_pixels,
        });
    }
    d.scale(info.width.div_ceil(8), info.height.div_ceil(8))
        .map_err(undecodable)?;
    d.decode().map_err(undecodable)?;
    if jpeg_is_truncated(bytes) {
        return Err(DecodeError::Truncated {
            format: "jpeg",
            detail: "no end-of-image marker after the last scan".into(),
        });
    }
    Ok(())
}

/// Walks the marker segments from SOI to the first scan, then checks that
/// every 0xFF in the scan data starts a stuffed byte, a restart marker, or
/// a marker that may sit between scans, up to the end-of-image marker.
fn jpeg_check_markers(bytes: &[u8]) -> Result<(), String> {
    let segment_len = |at: usize| -> Result<usize, String> {
        bytes
            .get(at + 2..at + 4)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| format!("segment header cut off at byte {at}"))
    };
    // Header segments up to the first SOS.
    let mut i = 2;
    loop {
        if bytes.get(i) != Some(&0xFF) {
            return Err(format!("expected a marker at byte {i}"));
        }
        let Some(&m) = bytes.get(i + 1) else {
            return Err("headers cut off".into());
        };
        match m {
            0xFF => i += 1, // fill byte
            0x01 | 0xD0..=0xD7 => i += 2,
            0xD9 => return Err("end-of-image before any scan".into()),
            0xDA => {
                i += 2 + segment_len(i)?;
                break;
            }
            _ => i += 2 + segment_len(i)?,
        }
    }
    // Scan data, and the segments that may come between progressive scans.
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            0x00 | 0xD0..=0xD7 => i += 2,
            0xFF => i += 1, // fill byte before a marker
            0xD9 => return Ok(()),
            // DHT, DAC, DQT, DRI, SOS, DNL, APPn, COM.
            0xC4 | 0xCC | 0xDB | 0xDC | 0xDD | 0xDA | 0xE0..=0xEF | 0xFE => {
                i += 2 + segment_len(i)?;
            }
            m => {
                return Err(format!(
                    "unexpected marker FF{m:02X} at byte {i} inside scan data"
                ))
            }
        }
    }
    Err("scan data runs to the end of the file".into())
}

/// Walks PNG chunks: lengths in bounds, CRCs right, IEND present.
/// Errors are (truncated?, detail).
fn png_check_chunks(bytes: &[u8]) -> Result<(), (bool, String)> {
    let mut i = 8;
    loop {
        let Some(head) = bytes.get(i..i + 8) else {
            return Err((true, format!("chunk header cut off at byte {i}")));
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let end = i + 8 + len + 4;
        if end > bytes.len() {
            return Err((
                true,
                format!("chunk {} cut off", String::from_utf8_lossy(&head[4..8])),
            ));
        }
        let crc = u32::from_be_bytes(bytes[end - 4..end].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[i + 4..end - 4]) != crc {
            return Err((
                false,
                format!(
                    "CRC mismatch in chunk {}",
                    String::from_utf8_lossy(&head[4..8])
                ),
            ));
        }
        if &head[4..8] == b"IEND" {
            return Ok(());
        }
        i = end;
    }
}

/// Detects the container format from the bytes (not the file name).
pub fn detect_format(bytes: &[u8]) -> Result<Format, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => Ok(Format::Jpeg),
        Ok(ImageFormat::Png) => Ok(Format::Png),
        Ok(ImageFormat::WebP) => Ok(Format::Webp),
        Ok(ImageFormat::Gif) => Ok(Format::Gif),
        Ok(other) => Err(DecodeError::Unsupported {
            format: format!("{other:?}").to_lowercase(),
        }),
        Err(_) => Err(DecodeError::Undecodable {
            detail: format!("unrecognised file signature {}", signature(bytes)),
        }),
    }
}

fn signature(bytes: &[u8]) -> String {
    let head: String = bytes[..bytes.len().min(8)]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(16)]);
    if text.chars().all(|c| !c.is_control() || c.is_whitespace()) {
        format!("{head} ({:?})", text.trim())
    } else {
        head
    }
}

/// Decodes `bytes` (first frame of a GIF), checking limits before
/// allocating, and applies the EXIF orientation.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Decoded, DecodeError> {
    let format = detect_format(bytes)?;
    let (decoder, Header { mode, orientation }) = open_decoder(bytes, format, limits)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| classify(format, e))?;
    // zune-jpeg is lenient: it fills a cut-off scan with grey instead of failing.
    if format == Format::Jpeg && jpeg_is_truncated(bytes) {
        return Err(DecodeError::Truncated {
            format: "jpeg",
            detail: "no end-of-image marker after the last scan".into(),
        });
    }
    if let Some(o) = Orientation::from_exif(orientation) {
        image.apply_orientation(o);
    }
    Ok(Decoded {
        format,
        mode,
        orientation,
        image,
    })
}

struct Header {
    mode: &'static str,
    orientation: u8,
}

/// Opens a decoder with the allocation limit, refuses more than
/// `max_pixels` before any pixel is decoded, and reads the header facts
/// (mode, EXIF orientation).
fn open_decoder<'a>(
    bytes: &'a [u8],
    format: Format,
    limits: &Limits,
) -> Result<(impl ImageDecoder + 'a, Header), DecodeError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    let mut lim = image::Limits::default();
    lim.max_alloc = Some(limits.max_alloc);
    reader.limits(lim);
    let mut decoder = reader.into_decoder().map_err(|e| classify(format, e))?;
    let (width, height) = decoder.dimensions();
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            max_pixels: limits.max_pixels,
        });
    }
    let header = Header {
        mode: match format {
            Format::Gif => "p8",
            Format::Jpeg if jpeg_components(bytes) == Some(4) => "cmyk8",
            _ => color_mode(decoder.color_type()),
        },
        orientation: decoder.orientation().map(|o| o.to_exif()).unwrap_or(1),
    };
    Ok((decoder, header))
}

fn color_mode(c: image::ColorType) -> &'static str {
    use image::ColorType::*;
    match c {
        L8 => "l8",
        La8 => "la8",
        Rgb8 => "rgb8",
        Rgba8 => "rgba8",
        L16 => "l16",
        La16 => "la16",
        Rgb16 => "rgb16",
        Rgba16 => "rgba16",
        Rgb32F => "rgb32f",
        Rgba32F => "rgba32f",
        _ => "other",
    }
}

fn classify(format: Format, e: ImageError) -> DecodeError {
    let fmt = format.as_str();
    match e {
        ImageError::Limits(l) => DecodeError::AllocLimit {
            detail: l.to_string(),
        },
        ImageError::Unsupported(u) => DecodeError::Unsupported {
            format: format!("{fmt} ({u})"),
        },
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Truncated {
                format: fmt,
                detail: io.to_string(),
            }
        }
        other => {
            let detail = other.to_string();
            let lower = detail.to_lowercase();
            let truncated = [
                "eof",
                "end of",
                "unexpected end",
                "truncat",
                "not enough data",
                "no more data",
                "insufficient",
            ]
            .iter()
            .any(|p| lower.contains(p));
            if truncated {
                DecodeError::Truncated {
                    format: fmt,
                    detail,
                }
            } else {
                DecodeError::Undecodable { detail }
            }
        }
    }
}

/// Walks the JPEG marker segments up to the first frame header and
/// returns its component count (4 = CMYK/YCCK).
pub fn jpeg_components(bytes: &[u8]) -> Option<u8> {
    let mut i = 2; // after SOI
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        // SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            return bytes.get(i + 9).copied();
        }
        if marker == 0xDA {
            return None;
        }
        i += 2 + len;
    }
    None
}

/// True when no end-of-image marker (FFD9) follows the last start-of-scan
/// (FFDA). Inside entropy-coded data 0xFF is always stuffed (FF00) or a
/// restart marker, so FFD9 there is the real end; an EXIF thumbnail's EOI
/// comes before the main image's scans and does not count.
pub fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    // The last EOI is normally the last two bytes, so this scans little.
    match bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]) {
        Some(eoi) => bytes[eoi..].windows(2).any(|w| w == [0xFF, 0xDA]),
        None => bytes.windows(2).any(|w| w == [0xFF, 0xDA]),
    }
}

/// Upright 8-bit RGB: alpha composited over white, 16-bit and float
/// rounded to 8 bits, grey replicated.
pub fn to_rgb8(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for c in 0..3 {
            // c·a + 255·(255−a), divided by 255 with rounding.
            let v = p[c] as u32 * a + 255 * (255 - a);
            o[c] = ((v + 127) / 255) as u8;
        }
    }
    out
}

/// Encodes upright RGB as JPEG at `quality` (1–100).
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    image.write_with_encoder(enc)?;
    Ok(out)
}

/// Encodes upright RGB as PNG.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    let enc = image::codecs::png::PngEncoder::new(&mut out);
    image.write_with_encoder(enc)?;
    Ok(out)
}

/// A photo-like test image: smooth colour fields plus fine noise, so it
/// compresses like a photograph: about 1.4 bits per pixel at JPEG quality
/// 90, like Flickr's downloads (for benchmarks; deterministic per seed).
pub fn synthetic_photo(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut state = (seed + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let phase = (state % 1000) as f32 / 100.0;
    RgbImage::from_fn(width, height, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state % 10) as f32;
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let r = 128.0 + 90.0 * (6.0 * fx + phase).sin() + n;
        let g = 110.0 + 80.0 * (5.0 * fy + 2.0 * fx - phase).cos() + n;
        let b = 100.0 + 70.0 * (9.0 * fx * fy + phase).sin() + n;
        image::Rgb([
            r.clamp(0.0, 255.0) as u8,
            g.clamp(0.0, 255.0) as u8,
            b.clamp(0.0, 255.0) as u8,
        ])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
        encode_jpeg(&img, 90).unwrap()
    }

    #[test]
    fn reasons() {
        assert_eq!(
            decode(&[], &Limits::default()).unwrap_err().reason(),
            "empty"
        );
        let e = decode(b"<!doctype html><html>", &Limits::default()).unwrap_err();
        assert_eq!(e.reason(), "undecodable");
        assert!(e.to_string().contains("doctype"), "{e}");
        let full = jpeg(64, 48);
        assert!(!jpeg_is_truncated(&full));
        let cut = &full[..full.len() * 2 / 3];
        assert_eq!(
            decode(cut, &Limits::default()).unwrap_err().reason(),
            "truncated"
        );
        let small = Limits {
            max_pixels: 1000,
            ..Limits::default()
        };
        let e = decode(&full, &small).unwrap_err();
        assert_eq!(e.reason(), "too_large");
        assert!(e.to_string().contains("64×48"), "{e}");
    }

    #[test]
    fn jpeg_header_facts() {
        let j = jpeg(10, 10);
        assert_eq!(jpeg_components(&j), Some(3));
        let d = decode(&j, &Limits::default()).unwrap();
        assert_eq!((d.format, d.mode, d.orientation), (Format::Jpeg, "rgb8", 1));
        assert!(d.is_plain());
    }

    #[test]
    fn alpha_over_white() {
        let mut img = image::RgbaImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        img.put_pixel(1, 0, image::Rgba([0, 100, 200, 128]));
        let rgb = to_rgb8(&DynamicImage::ImageRgba8(img));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        // 0·128/255 + 255·127/255 = 127; 100·128/255 + 127 = 177.2; 200·128/255 + 127 = 227.4
        assert_eq!(rgb.get_pixel(1, 0).0, [127, 177, 227]);
    }
}
