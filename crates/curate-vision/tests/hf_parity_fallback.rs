//! The same comparison as `hf_parity.rs` without libjpeg-turbo (its own
//! process, so the switch below is seen before the library is looked up):
//! JPEGs then go through jpeg-decoder, within the documented bounds.

mod common;

use curate_vision::preprocess::PixelSpec;

#[test]
fn without_libjpeg_turbo_jpegs_stay_within_a_few_levels() {
    std::env::set_var("CURATE_TURBOJPEG", "off");
    assert!(!curate_vision::turbo::available());
    let results = common::run("clip-tiny", "reference/reference.json", PixelSpec::clip());
    common::check(&results);
    assert!(
        results
            .iter()
            .any(|(p, s)| p.ends_with(".jpg") && s.max_levels > 0),
        "the fallback decoder really ran"
    );
}
