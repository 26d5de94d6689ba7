//! libjpeg-turbo through its TurboJPEG API, loaded at run time.
//!
//! Pillow decodes JPEGs with libjpeg-turbo (accurate integer IDCT, fancy
//! upsampling), so with the same library our pixels are the reference's
//! bit for bit; its SIMD decoder is also the fastest, and it decodes at
//! reduced DCT scale (1/2, 1/4, 1/8) natively. It is optional: the library
//! is looked up at run time (`$CURATE_TURBOJPEG`, else `libturbojpeg.so.0`,
//! Debian/Ubuntu package `libturbojpeg0`), and without it `jpeg-decoder`
//! is used, a few levels off the reference at edges.

use std::ffi::{c_char, c_int, c_uchar, c_ulong, c_void, CStr};
use std::sync::OnceLock;

type Handle = *mut c_void;

struct Api {
    _lib: libloading::Library,
    init: unsafe extern "C" fn() -> Handle,
    header: unsafe extern "C" fn(
        Handle,
        *const c_uchar,
        c_ulong,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
    ) -> c_int,
    decompress: unsafe extern "C" fn(
        Handle,
        *const c_uchar,
        c_ulong,
        *mut c_uchar,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
    ) -> c_int,
    error: unsafe extern "C" fn(Handle) -> *mut c_char,
    destroy: unsafe extern "C" fn(Handle) -> c_int,
    /// The name it was loaded by.
    name: String,
}

const TJPF_RGB: c_int = 0;
const TJCS_GRAY: c_int = 2;
const TJCS_CMYK: c_int = 3;
const TJCS_YCCK: c_int = 4;
const TJFLAG_ACCURATEDCT: c_int = 4096;
const TJFLAG_STOPONWARNING: c_int = 8192;

fn load() -> Option<Api> {
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    if let Some(p) = std::env::var_os("CURATE_TURBOJPEG").filter(|v| !v.is_empty()) {
        if p == "off" {
            return None;
        }
        names.push(p);
    }
    names.extend(
        [
            "libturbojpeg.so.0",
            "libturbojpeg.so",
            "libturbojpeg.0.dylib",
            "libturbojpeg.dylib",
        ]
        .iter()
        .map(Into::into),
    );
    for name in names {
        // SAFETY: loading a C library with no initialisers of concern; symbols checked below.
        let Ok(lib) = (unsafe { libloading::Library::new(&name) }) else {
            continue;
        };
        // SAFETY: the signatures are TurboJPEG 2.x/3.x's (turbojpeg.h).
        let api = unsafe {
            (|| -> Result<Api, libloading::Error> {
                Ok(Api {
                    init: *lib.get(b"tjInitDecompress\0")?,
                    header: *lib.get(b"tjDecompressHeader3\0")?,
                    decompress: *lib.get(b"tjDecompress2\0")?,
                    error: *lib.get(b"tjGetErrorStr2\0")?,
                    destroy: *lib.get(b"tjDestroy\0")?,
                    name: name.to_string_lossy().into_owned(),
                    _lib: lib,
                })
            })()
        };
        if let Ok(api) = api {
            return Some(api);
        }
    }
    None
}

fn api() -> Option<&'static Api> {
    static API: OnceLock<Option<Api>> = OnceLock::new();
    API.get_or_init(load).as_ref()
}

/// True when libjpeg-turbo was found.
pub fn available() -> bool {
    api().is_some()
}

/// The JPEG decoder model inputs go through, in words, for `doctor` and
/// the first log line of an image-model stage.
pub fn describe() -> String {
    match api() {
        Some(api) => format!(
            "libjpeg-turbo ({}; Pillow's decoder: inputs equal the Hugging Face reference bit for bit)",
            api.name
        ),
        None => "jpeg-decoder (libturbojpeg not found: inputs differ from Pillow's by up to a few levels; \
                 install libturbojpeg0 or set CURATE_TURBOJPEG)"
            .to_string(),
    }
}

struct Decompressor(Handle);

impl Drop for Decompressor {
    fn drop(&mut self) {
        if let Some(api) = api() {
            // SAFETY: a handle from tjInitDecompress, destroyed once.
            unsafe { (api.destroy)(self.0) };
        }
    }
}

thread_local! {
    static HANDLE: Option<Decompressor> = api().and_then(|api| {
        // SAFETY: tjInitDecompress has no preconditions.
        let h = unsafe { (api.init)() };
        (!h.is_null()).then_some(Decompressor(h))
    });
}

/// A decoded picture: RGB, `width`×`height`.
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// Result of [`decode`]: `None` when libjpeg-turbo is missing or the JPEG is CMYK/YCCK.
pub fn decode(bytes: &[u8], reduction: u32) -> Option<Result<Picture, String>> {
    let api = api()?;
    HANDLE.with(|h| {
        let h = h.as_ref()?.0;
        let (mut w, mut ht, mut sub, mut cs) = (0, 0, 0, 0);
        let err = || {
            // SAFETY: the handle is valid; the string is NUL-terminated and owned by the library.
            unsafe { CStr::from_ptr((api.error)(h)) }
                .to_string_lossy()
                .into_owned()
        };
        // SAFETY: bytes is a valid buffer of the given length; outputs are valid pointers.
        let rc = unsafe {
            (api.header)(
                h,
                bytes.as_ptr(),
                bytes.len() as c_ulong,
                &mut w,
                &mut ht,
                &mut sub,
                &mut cs,
            )
        };
        if rc != 0 {
            return Some(Err(err()));
        }
        if cs == TJCS_CMYK || cs == TJCS_YCCK {
            return None;
        }
        let _ = TJCS_GRAY; // grey is expanded to RGB by replication, as Pillow's convert("RGB")
        let r = reduction.max(1) as c_int;
        // TJSCALED(dim, 1/r) = ceil(dim / r).
        let (sw, sh) = ((w + r - 1) / r, (ht + r - 1) / r);
        let mut out = vec![0u8; sw as usize * sh as usize * 3];
        // SAFETY: out holds sw·sh·3 bytes, the pitch given.
        let rc = unsafe {
            (api.decompress)(
                h,
                bytes.as_ptr(),
                bytes.len() as c_ulong,
                out.as_mut_ptr(),
                sw,
                sw * 3,
                sh,
                TJPF_RGB,
                TJFLAG_ACCURATEDCT | TJFLAG_STOPONWARNING,
            )
        };
        if rc != 0 {
            return Some(Err(err()));
        }
        Some(Ok(Picture {
            width: sw as u32,
            height: sh as u32,
            rgb: out,
        }))
    })
}
