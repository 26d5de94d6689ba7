//! Pillow's resampling (`Image.resize` on 8-bit images, `libImaging/Resample.c`),
//! reproduced bit for bit: the same filters, the same coefficient bounds and
//! normalisation, 22-bit fixed-point coefficients, a horizontal pass into
//! an 8-bit intermediate covering only the rows the vertical pass needs,
//! then the vertical pass, each rounded and clipped the same way.
//!
//! Hugging Face's (slow) image processors resize with Pillow, so matching it
//! exactly is what makes our model inputs equal to the reference's.

/// Pillow's filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let px = x * std::f64::consts::PI;
                    px.sin() / px * (0.54 + 0.46 * px.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if -3.0 < x && x < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: the first input index, the tap count, and fixed-point taps (`ksize` each).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

fn precompute(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut kk = vec![0i32; out_size * ksize];
    let mut bounds = Vec::with_capacity(out_size);
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, slot) in w.iter_mut().enumerate().take(count) {
            let v = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *slot = v;
            ww += v;
        }
        let k = &mut kk[xx * ksize..(xx + 1) * ksize];
        for x in 0..count {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            k[x] = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, count));
    }
    Coeffs { ksize, bounds, kk }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes an interleaved 8-bit image with `C` channels from `w`×`h` to `nw`×`nh`.
pub fn resize<const C: usize>(
    src: &[u8],
    w: usize,
    h: usize,
    nw: usize,
    nh: usize,
    filter: Filter,
) -> Vec<u8> {
    resize_region::<C>(src, w, h, nw, nh, (0, 0, nw, nh), filter)
}

/// The part `(left, top, width, height)` of what [`resize`] would return,
/// computing only those output pixels (each output pixel depends only on
/// its own coefficients, so the values are identical): a resize followed
/// by a crop at the cost of the crop.
pub fn resize_region<const C: usize>(
    src: &[u8],
    w: usize,
    h: usize,
    nw: usize,
    nh: usize,
    region: (usize, usize, usize, usize),
    filter: Filter,
) -> Vec<u8> {
    assert_eq!(src.len(), w * h * C, "source is w·h·C bytes");
    let (left, top, rw, rh) = region;
    assert!(
        left + rw <= nw && top + rh <= nh,
        "region inside the output"
    );
    let need_h = nw != w;
    let need_v = nh != h;
    let vert = precompute(h, nh, filter);
    // Source rows the region's output rows read.
    let (first, last) = if need_v {
        let a = vert.bounds[top].0;
        let (b, n) = vert.bounds[top + rh - 1];
        (a, b + n)
    } else {
        (top, top + rh)
    };
    // Horizontal pass over those rows, region columns only.
    let mid: Vec<u8> = if need_h {
        let hor = precompute(w, nw, filter);
        let rows = last - first;
        let mut out = vec![0u8; rw * rows * C];
        let cols = &hor.bounds[left..left + rw];
        for (y, orow) in out.chunks_exact_mut(rw * C).enumerate() {
            let irow = &src[(y + first) * w * C..(y + first + 1) * w * C];
            for (xx, &(xmin, count)) in cols.iter().enumerate() {
                let k0 = (left + xx) * hor.ksize;
                let k = &hor.kk[k0..k0 + count];
                let px = &irow[xmin * C..(xmin + count) * C];
                let mut ss = [1i32 << (PRECISION_BITS - 1); C];
                for (p, &kv) in px.chunks_exact(C).zip(k) {
                    for c in 0..C {
                        ss[c] += p[c] as i32 * kv;
                    }
                }
                for c in 0..C {
                    orow[xx * C + c] = clip8(ss[c]);
                }
            }
        }
        out
    } else {
        let mut out = Vec::with_capacity(rw * (last - first) * C);
        for y in first..last {
            out.extend_from_slice(&src[(y * w + left) * C..(y * w + left + rw) * C]);
        }
        out
    };
    let stride = rw * C;
    if !need_v {
        return mid;
    }
    let mut out = vec![0u8; rw * rh * C];
    let mut acc = vec![0i32; stride];
    for yy in 0..rh {
        let (ymin, count) = vert.bounds[top + yy];
        let k0 = (top + yy) * vert.ksize;
        let k = &vert.kk[k0..k0 + count];
        acc.fill(1 << (PRECISION_BITS - 1));
        for (y, &kv) in k.iter().enumerate() {
            let r = ymin + y - first;
            let irow = &mid[r * stride..(r + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(irow) {
                *a += p as i32 * kv;
            }
        }
        for (o, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}
