//! Stage pages: fetch/ingest (outcomes by reason, throughput, sizes,
//! download facts), captions (lengths per task), scores (histogram with
//! the tag bands), latents (bucket distribution), and a generic page for
//! any other stage with per-record outcomes (embed).

mod captions;
mod common;
mod generic;
mod images;
mod latents;
mod scores;

pub use captions::captions_page;
pub use generic::generic_page;
pub use images::images_page;
pub use latents::latents_page;
pub use scores::scores_page;
