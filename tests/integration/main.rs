//! Integration tests: they drive the real `curate` binary as a child process.

mod caption;
mod cli;
mod common;
mod dedup;
mod embed;
mod export;
mod fetch;
mod import_embeddings;
mod ingest;
mod latents;
mod report;
mod resume;
mod score;
mod slurm;
mod text;
mod train;
