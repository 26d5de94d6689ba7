//! Flags of `import-embeddings`.

use std::path::PathBuf;

use clap::Args;

use super::FloatDtype;

#[derive(Debug, Args)]
pub struct ImportEmbeddingsArgs {
    /// A parquet file or folder of them (key + embedding columns), or a clip-retrieval output
    /// folder (`img_emb/img_emb_N.npy` + `metadata/metadata_N.parquet`).
    pub input: PathBuf,
    /// Stage directory to write (an `embeddings` stage `dedup` reads).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Column holding the unique key of each row [default: `key`; clip-retrieval folders:
    /// `key` when the metadata has one, else `image_path`]. Text or integer columns.
    #[arg(long, value_name = "NAME")]
    pub key_col: Option<String>,
    /// Column holding the vectors of a parquet input: list, large_list or fixed_size_list of
    /// float16/float32/float64 (clip-retrieval folders read img_emb/*.npy instead).
    #[arg(long, value_name = "NAME", default_value = "embedding")]
    pub embedding_col: String,
    /// Model id stored with every row [default: `imported:<input name>`].
    #[arg(long)]
    pub model_id: Option<String>,
    /// Storage type of the (L2-normalised) embeddings.
    #[arg(long, value_enum, default_value_t = FloatDtype::F16)]
    pub dtype: FloatDtype,
    /// Stop unless every vector has this dimension [default: the first vector's].
    #[arg(long, value_name = "D", value_parser = clap::value_parser!(u32).range(1..))]
    pub dim: Option<u32>,
    /// Discard this directory's previous output if it was made with another configuration.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub shards: super::ShardArgs,
}
