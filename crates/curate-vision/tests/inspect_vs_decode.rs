//! The header-and-structure check agrees with a full decode on every
//! fixture, odd files included, and catches corruption a header read misses.

use std::path::PathBuf;

use curate_vision::{decode, inspect, Limits};

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/images");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| curate_vision::Format::from_extension(x).is_some())
            {
                out.push((
                    p.strip_prefix(&root).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn inspect_agrees_with_decode_on_every_fixture() {
    let files = fixtures();
    assert!(files.len() >= 40);
    let limits = Limits::default();
    for (name, bytes) in &files {
        match (decode(bytes, &limits), inspect(bytes, &limits)) {
            (Ok(d), Ok(i)) => {
                assert_eq!((d.width(), d.height()), (i.width, i.height), "{name}");
                assert_eq!(
                    (d.format, d.mode, d.orientation),
                    (i.format, i.mode, i.orientation),
                    "{name}"
                );
                assert_eq!(d.is_plain(), i.is_plain(), "{name}");
            }
            (Err(a), Err(b)) => assert_eq!(a.reason(), b.reason(), "{name}: {a} / {b}"),
            (a, b) => panic!(
                "{name}: decode {:?} vs inspect {:?}",
                a.map(|d| d.mode),
                b.map(|i| i.mode)
            ),
        }
    }
}

#[test]
fn structural_checks_catch_damage() {
    let files = fixtures();
    let limits = Limits::default();
    let png = &files
        .iter()
        .find(|(n, _)| n.ends_with("rgba.png"))
        .unwrap()
        .1;
    let mut flipped = png.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let e = inspect(&flipped, &limits).unwrap_err();
    assert_eq!(e.reason(), "undecodable");
    assert!(e.to_string().contains("CRC mismatch"), "{e}");

    let jpg = &files
        .iter()
        .find(|(n, _)| n.ends_with("photos/coffee-full.jpg"))
        .unwrap()
        .1;
    let cut = &jpg[..jpg.len() - 300];
    assert_eq!(inspect(cut, &limits).unwrap_err().reason(), "truncated");
    // An invalid marker planted in the scan data.
    let mut bad = jpg.clone();
    let at = bad.len() - 200;
    bad[at] = 0xFF;
    bad[at + 1] = 0xC0;
    let e = inspect(&bad, &limits).unwrap_err();
    assert!(e.to_string().contains("unexpected marker FFC0"), "{e}");
}

#[test]
fn scaled_jpeg_verification_agrees_with_decode() {
    let limits = Limits::default();
    let mut checked = 0;
    for (name, bytes) in fixtures() {
        if curate_vision::detect_format(&bytes).ok() != Some(curate_vision::Format::Jpeg) {
            continue;
        }
        let full = decode(&bytes, &limits);
        let scaled = curate_vision::verify_jpeg_scaled(&bytes, &limits);
        assert_eq!(
            full.is_ok(),
            scaled.is_ok(),
            "{name}: {:?} vs {:?}",
            full.err(),
            scaled.err()
        );
        checked += 1;
    }
    assert!(checked >= 20, "{checked} JPEGs");
    let limits = Limits {
        max_pixels: 100,
        ..Limits::default()
    };
    let (_, jpg) = fixtures()
        .into_iter()
        .find(|(n, _)| n.ends_with("coffee-full.jpg"))
        .unwrap();
    assert_eq!(
        curate_vision::verify_jpeg_scaled(&jpg, &limits)
            .unwrap_err()
            .reason(),
        "too_large"
    );
}

#[test]
fn marker_bytes_inside_header_segments_are_not_scans() {
    let limits = Limits::default();
    let (_, jpg) = fixtures()
        .into_iter()
        .find(|(n, _)| n.ends_with("photos/coffee-full.jpg"))
        .unwrap();
    // An APP15 segment whose payload holds FF DA and FF C0, as maker notes and
    // ICC profiles can, inserted after SOI; and fill bytes before the EOI.
    let payload = [0xFF, 0xDA, 0x00, 0x08, 0xFF, 0xC0, 0x12, 0x34];
    let mut with_app = vec![0xFF, 0xD8, 0xFF, 0xEF, 0x00, (payload.len() + 2) as u8];
    with_app.extend_from_slice(&payload);
    with_app.extend_from_slice(&jpg[2..jpg.len() - 2]);
    with_app.extend_from_slice(&[0xFF, 0xFF, 0xD9]);
    let info = inspect(&with_app, &limits).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((info.width, info.height), (300, 200));
    assert!(decode(&with_app, &limits).is_ok());
}
