//! `curate import-embeddings INPUT -o OUT`: embeddings made elsewhere (a
//! key + vector parquet, or clip-retrieval's img_emb/*.npy) as an
//! `embeddings` stage `dedup` reads. The stage is
//! `curate_stages::import_embeddings`; this file turns the flags into its settings.

use curate_io::embeddings::Dtype;
use curate_stage::StageSummary;
use curate_stages::import_embeddings::{ImportEmbeddings, ImportEmbeddingsSettings};

use crate::cli::{FloatDtype, ImportEmbeddingsArgs};

/// The flags as the library's settings.
pub fn settings(args: &ImportEmbeddingsArgs) -> ImportEmbeddingsSettings {
    ImportEmbeddingsSettings {
        input: args.input.clone(),
        key_col: args.key_col.clone(),
        embedding_col: args.embedding_col.clone(),
        model_id: args.model_id.clone(),
        dtype: match args.dtype {
            FloatDtype::F16 => Dtype::F16,
            FloatDtype::F32 => Dtype::F32,
        },
        dim: args.dim.map(|d| d as usize),
    }
}

pub fn run(args: &ImportEmbeddingsArgs) -> anyhow::Result<StageSummary> {
    let split = args.shards.split()?;
    let mut stage = ImportEmbeddings::open(&settings(args))?;
    super::run_stage(&mut stage, &args.output, args.overwrite, split)
}
